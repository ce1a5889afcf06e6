"""The `sync` queue worker: decode one message, run the engine, leave a trace of failures.

A message that can never succeed (not JSON, not a sync request) becomes a dead letter at once
instead of burning maxDequeueCount retries; everything else that fails raises, so the queue retries
it with back-off and, after the last attempt, the poison handler records why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import ValidationError

from shared.sync.engine import LinkBusyError, SyncEngine
from shared.sync.failures import run_recording_failures
from shared.sync.queues import SYNC_QUEUE, QueueProducer, parse_sync_request
from shared.sync.state import StateStore

log = logging.getLogger(__name__)


def process(
    state: Callable[[], StateStore],
    engine: Callable[[], SyncEngine],
    producer: Callable[[], QueueProducer],
    *,
    payload: str,
    dequeue_count: int,
) -> None:
    try:
        request = parse_sync_request(payload)
    except ValidationError as error:
        reason = f"not a valid sync request, so it can never succeed: {error.errors()[0]['msg']}"
        letter = state().record_dead_letter(
            queue=SYNC_QUEUE, payload=payload, dequeue_count=dequeue_count, reason=reason
        )
        log.error("dead letter %s: %s", letter.id, reason)
        return

    def handle() -> None:
        try:
            engine().handle(request)
        except LinkBusyError as busy:
            # Not a failure: another worker is syncing this link. The message comes back shortly,
            # without using up one of its deliveries (a failed one would wait the whole
            # visibilityTimeout and count towards the poison queue); sending fails -> a normal retry.
            producer().send_text(payload, queue=SYNC_QUEUE, delay_seconds=busy.retry_after_seconds)
            log.info("%s; the message comes back in %.0f s", busy, busy.retry_after_seconds)

    run_recording_failures(state(), queue=SYNC_QUEUE, payload=payload, dequeue_count=dequeue_count, handler=handle)
