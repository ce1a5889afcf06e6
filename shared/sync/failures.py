"""Queue message handling that leaves a trace: every failed attempt records why.

The Functions runtime moves a message to `<queue>-poison` after maxDequeueCount failures without
saying why. Recording the error of each attempt lets the poison handler's dead letter carry the
reason, so an admin sees "Salesforce said REQUEST_LIMIT_EXCEEDED", not just "failed 5 times".

An error no retry can fix (NeedsAdmin, shared/sync/errors.py: a revoked sign-in, a missing
permission) is dead-lettered at once with what the admin must do, instead of using up the deliveries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from shared import telemetry
from shared.sync.errors import ErrorKind, classify
from shared.sync.queues import QueueProducer
from shared.sync.state import ConcurrencyConflictError, DeadLetter, StateStore

log = logging.getLogger(__name__)
Result = TypeVar("Result")


def run_recording_failures(
    state: StateStore,
    *,
    queue: str,
    payload: str,
    dequeue_count: int,
    handler: Callable[[], Result],
) -> Result | None:
    """Run `handler`; on an exception, record it against the message and re-raise for a retry,
    or, when only an admin can fix it, dead-letter the message now (returns None)."""
    try:
        return handler()
    except Exception as error:
        classified = classify(error)
        if classified.kind is ErrorKind.NEEDS_ADMIN:
            letter = state.record_dead_letter(
                queue=queue, payload=payload, dequeue_count=dequeue_count, reason=classified.reason
            )
            log.error("dead letter %s from %s at once: %s", letter.id, queue, classified.reason)
            return None
        log.warning("message on %s failed on attempt %d: %s", queue, dequeue_count, error)
        try:
            state.record_failure(queue, payload, f"{type(error).__name__}: {error}", dequeue_count)
        except Exception:  # the original error matters more; keep it, but say the note was lost
            log.exception("could not record the failure of a message on %s", queue)
        raise


def quarantine(state: Callable[[], StateStore], *, queue: str, payload: str, dequeue_count: int) -> None:
    """Record a poison message as a dead letter. Never raises: a poison handler that fails would
    only move the message to yet another poison queue; instead the payload goes to the log.
    `state` is a factory so that even a settings error is caught and logged here."""
    body = _json_object(payload)
    traceparent, tracestate = body.get("traceparent"), body.get("tracestate")
    ids = {
        telemetry.REFERRAL_ID: body.get("referral_id"),
        telemetry.CRM_OBJECT: body.get("object"),
        telemetry.CRM_RECORD_ID: body.get("record_id"),
    }
    with telemetry.continued_trace(
        f"dead letter {queue}",
        traceparent if isinstance(traceparent, str) else None,
        tracestate if isinstance(tracestate, str) else None,
        {name: value for name, value in ids.items() if isinstance(value, str)},
    ) as span:
        try:
            letter = state().record_dead_letter(queue=queue, payload=payload, dequeue_count=dequeue_count)
        except Exception:
            span.set_attribute(telemetry.OUTCOME, "dead_letter")
            log.exception("could not record a dead letter from %s; payload kept here: %s", queue, payload)
            return
        result = {
            telemetry.OUTCOME: "dead_letter",
            telemetry.ERROR_REASON: telemetry.error_reason(letter.reason),
            telemetry.DEAD_LETTER_ID: letter.id,
        }
        span.set_attributes(result)
        log.error(
            "dead letter %s from %s after %d attempts: %s",
            letter.id,
            queue,
            letter.dequeue_count,
            letter.reason,
            extra=result,
        )


def _json_object(payload: str) -> dict[str, Any]:
    """The message as a JSON object, read leniently: a poison message may be anything."""
    try:
        body = json.loads(payload)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class ReplayError(Exception):
    """A dead letter cannot be replayed. Nothing was changed."""


class DeadLetterNotFound(ReplayError):
    """No dead letter has this id."""


class AlreadyReplayed(ReplayError):
    """The dead letter was replayed before."""


def replay_dead_letter(state: StateStore, queues: QueueProducer, letter_id: str) -> DeadLetter:
    """Put a dead letter back on its queue, exactly once (the admin CLI and the status page).

    The letter is claimed first with its ETag, so of two admins replaying at once one is told it
    was replayed already; if the queue then refuses the message, the claim is undone."""
    try:
        letter = state.get_dead_letter(letter_id)
    except ValueError:  # not even a valid id
        letter = None
    if letter is None:
        raise DeadLetterNotFound(f"there is no dead letter with id {letter_id!r}")
    if letter.replayed_at is not None:
        raise AlreadyReplayed(
            f"dead letter {letter.id} was replayed already, at {letter.replayed_at:%Y-%m-%d %H:%M:%S} UTC"
        )
    try:
        claimed = state.mark_dead_letter_replayed(letter.id, etag=letter.etag)
    except ConcurrencyConflictError:
        raise AlreadyReplayed(f"dead letter {letter.id} was replayed already (by someone else just now)") from None
    try:
        queues.send_text(letter.payload, queue=letter.queue)
    except Exception:
        state.unmark_dead_letter_replayed(claimed)
        raise
    return claimed
