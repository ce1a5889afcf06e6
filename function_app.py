"""Every trigger of Co-sell Sync: the table of contents.

Each function decodes its trigger, calls `shared/`, and encodes the reply: no business logic here.
Importing this module must stay cheap and side-effect free (the host imports it on every cold
start); collaborators are built on first use by `shared.bootstrap`.
"""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func

from shared import bootstrap, telemetry
from shared.admin import health as health_checks
from shared.sync import failures, runs
from shared.sync.queues import SYNC_POISON_QUEUE, SYNC_QUEUE

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _json(body: Any, status_code: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status_code, mimetype="application/json")


# ---- Health ---------------------------------------------------------------------------------------
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Anonymous probe: ok/degraded and the version only."""
    report = health_checks.check_health(detailed=False, sections=bootstrap.health_sections())
    return _json(report.public_body(), report.http_status)


@app.route(route="health/details", methods=["GET"])
def health_details(req: func.HttpRequest) -> func.HttpResponse:
    """Function key: settings, storage, queue depths, dead letters, Partner Center sign-in."""
    report = health_checks.check_health(detailed=True, sections=bootstrap.health_sections())
    return _json(report.detailed_body(), report.http_status)


# ---- Partner Center -------------------------------------------------------------------------------
@app.route(route="partner-center/events", methods=["POST"])
def receive_partner_center_event(req: func.HttpRequest) -> func.HttpResponse:
    """Function key + Partner Center signature: verify, enqueue a `sync` message, acknowledge."""
    from shared.partner_center import webhook

    with telemetry.span("receive Partner Center event"):  # the root of this change's trace
        result = webhook.receive_event(req.get_body(), dict(req.headers), bootstrap.webhook_verifier())
        if result.message is not None:
            message = result.message
            # A failure here is a 500: Partner Center delivers again.
            runs.recorded(bootstrap.state_store, runs.PC_WEBHOOK, lambda: bootstrap.queue_producer().send(message))
    return _json(result.body, result.status)


@app.timer_trigger(arg_name="timer", schedule="%PC_TOKEN_REFRESH_SCHEDULE%", run_on_startup=False)
def refresh_partner_center_sign_in(timer: func.TimerRequest) -> None:
    """Redeem the Partner Center refresh token so it never idles out; failures go to the health page."""
    runs.recorded(bootstrap.state_store, runs.PC_TOKEN_REFRESH, bootstrap.partner_center_auth().refresh)


# Not `admin/...`: the Functions host reserves routes whose first segment is `admin`, whatever the prefix.
@app.route(route="manage/partner-center/webhook-registration", methods=["POST"])
def register_partner_center_webhook(req: func.HttpRequest) -> func.HttpResponse:
    """Function key: register `{"url", "send_test"}` with Partner Center (GET -> compare -> POST/PUT)."""
    from shared.partner_center import registration

    status, body = registration.handle_registration_request(req.get_body())
    return _json(body, status)


# ---- Sync -----------------------------------------------------------------------------------------
@app.queue_trigger(arg_name="message", queue_name=SYNC_QUEUE, connection="AzureWebJobsStorage")
def process_sync_request(message: func.QueueMessage) -> None:
    """Make one referral <-> CRM record link consistent: read both sides, merge, write the differences."""
    from shared.sync import worker

    worker.process(
        bootstrap.state_store,
        bootstrap.sync_engine,
        bootstrap.queue_producer,
        payload=message.get_body().decode("utf-8", errors="replace"),
        dequeue_count=getattr(message, "dequeue_count", None) or 0,
    )


@app.timer_trigger(arg_name="timer", schedule="%CRM_POLL_SCHEDULE%", run_on_startup=False)
def poll_crm_changes(timer: func.TimerRequest) -> None:
    """Enqueue CRM records with Sync = Yes changed since the watermark; then move the watermark."""
    from shared.sync import polling

    runs.recorded(
        bootstrap.state_store,
        runs.CRM_POLL,
        lambda: polling.poll_crm(bootstrap.crm(), bootstrap.state_store(), bootstrap.queue_producer()),
    )


@app.timer_trigger(arg_name="timer", schedule="%PC_RECONCILE_SCHEDULE%", run_on_startup=False)
def reconcile_partner_center(timer: func.TimerRequest) -> None:
    """Enqueue referrals Partner Center changed since the watermark (webhooks it gave up on)."""
    from shared.sync import polling

    runs.recorded(
        bootstrap.state_store,
        runs.PC_RECONCILE,
        lambda: polling.reconcile_partner_center(
            bootstrap.partner_center(), bootstrap.state_store(), bootstrap.queue_producer()
        ),
    )


# ---- Dead letters ---------------------------------------------------------------------------------
@app.queue_trigger(arg_name="message", queue_name=SYNC_POISON_QUEUE, connection="AzureWebJobsStorage")
def quarantine_poison_sync_request(message: func.QueueMessage) -> None:
    """A `sync` message that failed maxDequeueCount times: record it as a dead letter; never raises."""
    failures.quarantine(
        bootstrap.state_store,
        queue=SYNC_QUEUE,
        payload=message.get_body().decode("utf-8", errors="replace"),
        dequeue_count=getattr(message, "dequeue_count", None) or 0,
    )


# ---- Status page and alerts -----------------------------------------------------------------------
# Anonymous for the Functions host: in Azure, App Service authentication (Entra ID) guards it and the
# page checks the admin app role; in the sandbox the page checks the function key itself.
@app.route(route="status", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def status_page(req: func.HttpRequest) -> func.HttpResponse:
    """The status page (GET) and its Replay action (POST, CSRF-protected)."""
    from shared.admin.page import PageRequest

    response = bootstrap.status_page(
        PageRequest(
            method=req.method.upper(),
            url=req.url,
            params=dict(req.params),
            headers=dict(req.headers),
            body=req.get_body() or b"",
        )
    )
    return func.HttpResponse(
        response.body, status_code=response.status, headers=response.headers, mimetype="text/html", charset="utf-8"
    )


@app.timer_trigger(arg_name="timer", schedule="%ALERT_SCHEDULE%", run_on_startup=False)
def evaluate_alerts(timer: func.TimerRequest) -> None:
    """Send Teams / Slack / email alerts that are due (deduplicated); never touches a sync."""
    runs.recorded(bootstrap.state_store, runs.ALERTS, bootstrap.send_alerts)
