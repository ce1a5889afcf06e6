"""Trace context in `sync` queue messages, on a real Azurite queue; the dead-letter span and log record."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from shared import telemetry
from shared.sync import failures
from shared.sync.queues import (
    SYNC_QUEUE,
    CrmChange,
    PartnerCenterChange,
    QueueProducer,
    encode_sync_request,
    parse_sync_request,
)
from shared.sync.state import StateStore
from shared.sync.storage import StorageAccount
from tests.conftest import Recorder

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_message_keeps_a_valid_trace_context_and_drops_a_damaged_one_without_losing_the_change() -> None:
    message = parse_sync_request(
        json.dumps({"source": "pc", "referral_id": "r-1", "event": "referral-updated", "traceparent": TRACEPARENT})
    )
    assert message.traceparent == TRACEPARENT
    damaged = parse_sync_request(
        json.dumps({"source": "crm", "object": "lead", "record_id": "00Q1", "traceparent": "00-zz-<script>-01"})
    )
    assert isinstance(damaged, CrmChange) and damaged.traceparent is None and damaged.record_id == "00Q1"
    assert "traceparent" not in json.loads(encode_sync_request(CrmChange(object="lead", record_id="00Q1")))


def test_error_reasons_group_across_records() -> None:
    assert telemetry.error_reason("Not sent to Partner Center: enter a deal value greater than 0") == (
        "Not sent to Partner Center"
    )
    assert telemetry.error_reason("could not create the CRM opportunity for referral 4f1c-22: boom") == (
        "could not create the CRM opportunity for referral"
    )


@pytest.mark.azurite
def test_the_producer_puts_its_span_into_the_message_and_the_worker_span_continues_it(
    storage: StorageAccount, empty_sync_queues: None, spans: Recorder
) -> None:
    referral_id = str(uuid.uuid4())
    with telemetry.span("receive Partner Center event") as webhook:
        QueueProducer(storage).send(PartnerCenterChange(referral_id=referral_id, event="referral-updated"))
    sent = [m for m in storage.queue_client(SYNC_QUEUE).peek_messages(max_messages=32) if referral_id in m.content]
    carried = parse_sync_request(sent[0].content)
    producer = next(span for span in spans.spans() if span.name == "enqueue sync")
    assert producer.parent is not None and producer.parent.span_id == webhook.get_span_context().span_id
    assert carried.traceparent is not None
    assert carried.traceparent.split("-")[1:3] == [
        f"{producer.context.trace_id:032x}",
        f"{producer.context.span_id:016x}",
    ]

    with telemetry.continued_trace("sync pc", carried.traceparent, carried.tracestate) as consumer:
        pass
    assert consumer.get_span_context().trace_id == webhook.get_span_context().trace_id


@pytest.mark.azurite
def test_a_dead_letter_ends_the_change_trace_with_its_reason(
    storage: StorageAccount, spans: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="shared.sync.failures")
    state = StateStore(storage)
    payload = json.dumps(
        {"source": "pc", "referral_id": str(uuid.uuid4()), "event": "referral-updated", "traceparent": TRACEPARENT}
    )
    state.record_failure(SYNC_QUEUE, payload, "CrmTransientError: Salesforce said REQUEST_LIMIT_EXCEEDED", 5)
    failures.quarantine(lambda: state, queue=SYNC_QUEUE, payload=payload, dequeue_count=5)

    letter = next(span for span in spans.spans() if span.name == "dead letter sync")
    assert f"{letter.context.trace_id:032x}" == TRACEPARENT.split("-")[1]
    assert (letter.attributes or {})[telemetry.OUTCOME] == "dead_letter"
    assert (letter.attributes or {})[telemetry.ERROR_REASON] == "CrmTransientError"
    record = next(item for item in caplog.records if getattr(item, telemetry.OUTCOME, None) == "dead_letter")
    assert getattr(record, telemetry.DEAD_LETTER_ID) == (letter.attributes or {})[telemetry.DEAD_LETTER_ID]
