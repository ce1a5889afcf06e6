"""Traces across the real app on the local host: one trace per change, from the webhook or poll that
found it, through the `sync` queue message, to every API call of its sync; the worker's spans and
its log record carry the referral id, link id, CRM record id and outcome.

Spans are collected with the SDK's in-memory exporter (tests/conftest.py `spans`), installed as the
process's tracer provider: the local host runs the triggers in this process, as the worker does in Azure.
"""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from shared import telemetry
from tests.conftest import Recorder
from tests.e2e.sync.conftest import SyncSystem
from tests.e2e.sync.drivers import cosell_referral
from tests.e2e.sync.test_crm_to_pc import cosell_deal, create
from tests.waiting import wait_until

pytestmark = [pytest.mark.azurite, pytest.mark.sandbox, pytest.mark.e2e]


def url_of(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    return str(attributes.get("url.full") or attributes.get("http.url") or "")


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"expected one span {name!r}, got {[span.name for span in spans]}"
    return found[0]


def synced_consumer(recorder: Recorder, name: str, attribute: str, value: str) -> ReadableSpan:
    def find() -> ReadableSpan | None:
        return next(
            (
                span
                for span in recorder.spans()
                if span.kind == SpanKind.CONSUMER
                and span.name == name
                and (span.attributes or {}).get(attribute) == value
                and (span.attributes or {}).get(telemetry.OUTCOME) == "synced"
            ),
            None,
        )

    try:
        span = wait_until(find, what=f"the worker's span for {value}")
    except AssertionError as error:  # say which spans there were: that is the evidence
        seen = [
            (item.name, dict(item.attributes or {}))
            for item in recorder.spans()
            if value in {str(v) for v in (item.attributes or {}).values()}
        ]
        raise AssertionError(f"{error}; spans naming it: {seen}") from None
    assert span is not None
    return span


def in_trace(recorder: Recorder, span: ReadableSpan) -> list[ReadableSpan]:
    assert span.context is not None
    return [item for item in recorder.spans() if item.context and item.context.trace_id == span.context.trace_id]


def api_calls(spans: list[ReadableSpan], base_url: str) -> list[str]:
    return [
        f"{(span.attributes or {}).get('http.request.method') or (span.attributes or {}).get('http.method')} {url_of(span)}"
        for span in spans
        if span.kind == SpanKind.CLIENT and url_of(span).startswith(base_url)
    ]


def test_a_webhook_change_is_one_trace_from_the_webhook_through_the_queue_to_every_api_call(
    sync: SyncSystem, spans: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    sync.begin("traces: webhook -> queue -> worker")
    caplog.set_level(logging.INFO, logger="shared.sync.worker")
    shared = sync.partner_center.share_referral(cosell_referral())
    raw = sync.wait_for_record(shared["id"])

    consumer = synced_consumer(spans, "sync pc", telemetry.REFERRAL_ID, shared["id"])
    attributes = consumer.attributes or {}
    assert attributes[telemetry.LINK_ID] == f"pc-{shared['id']}"
    assert attributes[telemetry.CRM_RECORD_ID] == raw.id
    assert attributes[telemetry.CRM_OBJECT] == "opportunity"
    assert int(str(attributes[telemetry.CHANGE_AGE_MS])) >= 0

    change = in_trace(spans, consumer)
    webhook = one(change, "receive Partner Center event")
    producer = one(change, "enqueue sync")
    assert webhook.parent is None  # locally the root; in Azure a child of the host's request
    assert producer.parent is not None and producer.parent.span_id == webhook.context.span_id
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert (producer.attributes or {})[telemetry.REFERRAL_ID] == shared["id"]

    pc_calls = api_calls(change, sync.settings.pc_api_base_url)  # the Referrals API, not the certificate
    crm_calls = api_calls(change, sync.crm_control.base_url)
    assert f"GET {sync.settings.pc_api_base_url}/referrals/{shared['id']}" in pc_calls
    assert crm_calls, f"no CRM call in the change's trace: {[span.name for span in change]}"
    # Every Referrals API and CRM call of the trace is the worker's (the webhook itself only fetched
    # Partner Center's signing certificate, and the producer wrote to the queue).
    consumer_id = consumer.context.span_id
    api = [
        span
        for span in change
        if span.kind == SpanKind.CLIENT
        and url_of(span).startswith((sync.settings.pc_api_base_url, sync.crm_control.base_url))
    ]
    assert len(api) == len(pc_calls) + len(crm_calls)
    assert all(span.parent is not None and span.parent.span_id == consumer_id for span in api)

    logged = [record for record in caplog.records if getattr(record, telemetry.REFERRAL_ID, None) == shared["id"]]
    synced = [record for record in logged if getattr(record, telemetry.OUTCOME, None) == "synced"]
    assert synced, [record.getMessage() for record in logged]
    assert getattr(synced[0], telemetry.LINK_ID) == f"pc-{shared['id']}"
    assert getattr(synced[0], telemetry.CRM_RECORD_ID) == raw.id
    sync.assert_quiet()


def test_each_change_a_poll_finds_gets_its_own_trace_linked_to_the_poll(sync: SyncSystem, spans: Recorder) -> None:
    sync.begin("traces: CRM poll -> queue -> worker")
    created = create(sync, cosell_deal())
    sync.wait_for_raw(
        "opportunity", created.opportunity_id, lambda r: r.referral_id and r.sync_status == "Synced", "the referral id"
    )

    consumer = synced_consumer(spans, "sync crm", telemetry.CRM_RECORD_ID, created.opportunity_id)
    change = in_trace(spans, consumer)
    root = one(change, "CRM change")
    assert root.parent is None and root.kind == SpanKind.PRODUCER
    assert (root.attributes or {})[telemetry.CRM_RECORD_ID] == created.opportunity_id
    poll_context = root.links[0].context
    poll = next(span for span in spans.spans() if span.context and span.context.span_id == poll_context.span_id)
    assert poll.name == "poll CRM" and poll.context.trace_id != root.context.trace_id
    creates = [call for call in api_calls(change, sync.pc_control.base_url) if call.startswith("POST ")]
    assert creates == [f"POST {sync.settings.pc_api_base_url}/referrals"]
    assert (consumer.attributes or {})[telemetry.REFERRAL_ID]  # the new referral's id, from the link
    sync.assert_quiet()
