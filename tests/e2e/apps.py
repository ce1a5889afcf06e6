"""A test-only FunctionApp: a timer and a queue function that always fails.

It lives in tests/ so production code carries no "fail on purpose" flag.
"""

from __future__ import annotations

import azure.functions as func

from shared import bootstrap
from shared.sync.failures import run_recording_failures
from shared.sync.queues import SYNC_QUEUE

test_app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
timer_ticks: list[bool] = []


@test_app.timer_trigger(arg_name="timer", schedule="%TEST_TIMER_SCHEDULE%", run_on_startup=False)
def tick(timer: func.TimerRequest) -> None:
    timer_ticks.append(timer.past_due)


@test_app.queue_trigger(arg_name="message", queue_name=SYNC_QUEUE, connection="AzureWebJobsStorage")
def always_fails(message: func.QueueMessage) -> None:
    def outage() -> None:
        raise RuntimeError("simulated Salesforce outage")

    run_recording_failures(
        bootstrap.state_store(),
        queue=SYNC_QUEUE,
        payload=message.get_body().decode("utf-8"),
        dequeue_count=getattr(message, "dequeue_count", 0) or 0,
        handler=outage,
    )


@test_app.route(route="echo/{item}/{rest?}", methods=["POST"])
def echo(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        f"{req.method} {req.route_params.get('item')} {req.route_params.get('rest')} {req.params.get('q')} "
        f"{req.headers.get('x-custom')} {req.get_body().decode()}",
        status_code=201,
        headers={"X-Echo": "yes"},
    )
