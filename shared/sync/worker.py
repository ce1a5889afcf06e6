"""The `sync` queue worker: decode one message, run the engine, leave a trace of failures.

A message that can never succeed (not JSON, not a sync request) becomes a dead letter at once
instead of burning maxDequeueCount retries; everything else that fails raises, so the queue retries
it with back-off and, after the last attempt, the poison handler records why.

Each sync runs in a consumer span that continues the change's trace carried by the message
(shared/telemetry.py), and ends with one structured log record: referral id, link id, CRM record
id and outcome, read from the link the engine left behind (the engine itself knows nothing of it).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from shared import telemetry
from shared.sync.engine import LinkBusyError, SyncEngine
from shared.sync.failures import run_recording_failures
from shared.sync.queues import (
    SYNC_QUEUE,
    CrmChange,
    PartnerCenterChange,
    QueueProducer,
    message_attributes,
    parse_sync_request,
)
from shared.sync.state import Link, StateStore

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
        log.error(
            "dead letter %s: %s",
            letter.id,
            reason,
            extra={telemetry.OUTCOME: "invalid", telemetry.ERROR_REASON: "not a valid sync request"},
        )
        return
    attributes = message_attributes(request)
    with telemetry.continued_trace(
        f"sync {request.source}", request.traceparent, request.tracestate, attributes
    ) as span:
        started = dt.datetime.now(dt.UTC)
        try:
            handled = run_recording_failures(
                state(),
                queue=SYNC_QUEUE,
                payload=payload,
                dequeue_count=dequeue_count,
                handler=lambda: _handle(engine(), producer, request, payload),
            )
        except Exception as error:
            result = {telemetry.OUTCOME: "retry", telemetry.ERROR_REASON: type(error).__name__}
            span.set_attributes(result)
            log.warning("sync %s: retry (%s)", _subject(request), type(error).__name__, extra={**attributes, **result})
            raise
        if handled is None:  # only an admin can fix it: dead-lettered at once (shared/sync/failures.py)
            result = {telemetry.OUTCOME: "dead_letter", telemetry.ERROR_REASON: "needs an admin"}
            span.set_attributes(result)
            log.error("sync %s: dead letter (needs an admin)", _subject(request), extra={**attributes, **result})
            return
        if handled == "busy":
            span.set_attribute(telemetry.OUTCOME, "delayed")
            return
        result = _result(state(), request, started)
        span.set_attributes(result)
        outcome = result[telemetry.OUTCOME]
        log.log(
            logging.WARNING if outcome == "error" else logging.INFO,
            "sync %s: %s",
            _subject(request),
            outcome,
            extra={**attributes, **result},
        )


def _handle(
    engine: SyncEngine, producer: Callable[[], QueueProducer], request: PartnerCenterChange | CrmChange, payload: str
) -> str:
    """ "synced" (told apart from run_recording_failures' None for a message dead-lettered at once),
    or "busy" when another worker is syncing this link: not a failure. The message comes back
    shortly without using up one of its deliveries (a failed one would wait the whole
    visibilityTimeout and count towards the poison queue); if sending fails, a normal retry."""
    try:
        engine.handle(request)
    except LinkBusyError as busy:
        producer().send_text(payload, queue=SYNC_QUEUE, delay_seconds=busy.retry_after_seconds)
        log.info("%s; the message comes back in %.0f s", busy, busy.retry_after_seconds)
        return "busy"
    return "synced"


def _subject(request: PartnerCenterChange | CrmChange) -> str:
    if isinstance(request, PartnerCenterChange):
        return f"referral {request.referral_id}"
    return f"{request.object} {request.record_id}"


def _result(state: StateStore, request: PartnerCenterChange | CrmChange, started: dt.datetime) -> dict[str, Any]:
    """What the sync did, from the link it left: synced now, unchanged, in error, or no link (skipped)."""
    link: Link | None
    if isinstance(request, PartnerCenterChange):
        link = state.find_link_by_referral(request.referral_id)
    else:
        link = state.find_link_by_crm(request.object, request.record_id)
    age_ms = (dt.datetime.now(dt.UTC) - request.received_at).total_seconds() * 1000
    result: dict[str, Any] = {telemetry.CHANGE_AGE_MS: round(age_ms)}
    if link is None:
        return {**result, telemetry.OUTCOME: "skipped"}
    result |= telemetry.ids_of(
        {
            telemetry.LINK_ID: link.link_id,
            telemetry.REFERRAL_ID: link.referral_id,
            telemetry.CRM_OBJECT: link.crm_object,
            telemetry.CRM_RECORD_ID: link.crm_id,
        }
    )
    if link.status == "error" and link.last_error:
        return {**result, telemetry.OUTCOME: "error", telemetry.ERROR_REASON: telemetry.error_reason(link.last_error)}
    # Table storage keeps milliseconds; a sync that wrote anything took longer than that.
    synced_now = link.last_synced_at is not None and link.last_synced_at >= started - dt.timedelta(milliseconds=1)
    return {**result, telemetry.OUTCOME: "synced" if synced_now else "unchanged"}
