"""Traces and structured logs over OpenTelemetry: one trace per change, from the webhook or poll that
found it, through the `sync` queue message (W3C trace context carried in the message), to every API
call of its sync.

Our code uses the OpenTelemetry API only. In Azure the Python worker configures the SDK with
azure-monitor-opentelemetry (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true), so these spans and
log records reach Application Insights next to the host's own; tests install an in-memory exporter;
anywhere else every call here is a cheap no-op. HTTP clients are instrumented at the transport level
(httpx for Partner Center and Dataverse, requests for Salesforce and MSAL), never inside the engine.

The `cosell.*` attribute names below are used for span attributes and for the `extra` of log
records alike, so the Application Insights workbook (infra/app/workbook.bicep) queries one name.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # imported on first use: function_app.py imports this module on every cold start
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, Tracer

Kind = Literal["internal", "producer", "consumer"]

TRACER_NAME = "cosell-sync"

REFERRAL_ID = "cosell.referral_id"
LINK_ID = "cosell.link_id"
CRM_OBJECT = "cosell.crm_object"
CRM_RECORD_ID = "cosell.crm_record_id"
SOURCE = "cosell.source"
EVENT = "cosell.event"
OUTCOME = "cosell.outcome"
OUTCOMES = ("synced", "unchanged", "skipped", "error", "retry", "invalid", "dead_letter")
"""Values of OUTCOME: synced now | nothing to write | skipped (no link: not ours to sync) | error (a
permanent problem, said on the record) | retry (raised for the queue to retry) | invalid (not a sync
request: dead-lettered at once) | dead_letter (retries exhausted)."""
ERROR_REASON = "cosell.error_reason"
DEAD_LETTER_ID = "cosell.dead_letter_id"
CHANGE_AGE_MS = "cosell.change_age_ms"
"""Milliseconds from the change being found (webhook or poll) to the end of its sync."""

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def tracer() -> Tracer:
    from opentelemetry import trace

    return trace.get_tracer(TRACER_NAME)


@functools.cache
def _propagator() -> TextMapPropagator:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def _kind(kind: Kind) -> Any:
    from opentelemetry.trace import SpanKind

    return {"internal": SpanKind.INTERNAL, "producer": SpanKind.PRODUCER, "consumer": SpanKind.CONSUMER}[kind]


_instrument_lock = threading.Lock()


def instrument_http_clients() -> None:
    """Spans (and `traceparent` headers) for every outbound HTTP call; once per process.

    Locked: the first triggers of a cold start run in parallel, and instrumenting a library twice
    would nest every call's span inside a second one."""
    with _instrument_lock:
        _instrument_once()


@functools.cache
def _instrument_once() -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    # Skipped where azure-monitor-opentelemetry instrumented the library already.
    for instrumentor in (HTTPXClientInstrumentor(), RequestsInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def valid_traceparent(value: str | None) -> str | None:
    """`value` when it is a W3C traceparent, else None: a damaged trace context must never cost a sync."""
    return value if value is not None and _TRACEPARENT.match(value) else None


def current_trace_context() -> dict[str, str]:
    """The current span's W3C trace context (`traceparent`, maybe `tracestate`); empty without one."""
    carrier: dict[str, str] = {}
    _propagator().inject(carrier)
    return carrier


def ids_of(values: Mapping[str, Any]) -> dict[str, str]:
    """The attributes among `values` that are set (for spans and log records alike)."""
    return {name: str(value) for name, value in values.items() if value not in (None, "")}


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *, kind: Kind = "internal") -> Iterator[Span]:
    """A child of the current span (the host's invocation in Azure), with our attributes."""
    with tracer().start_as_current_span(name, kind=_kind(kind), attributes=ids_of(attributes or {})) as current:
        yield current


@contextlib.contextmanager
def change_trace(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """A new trace for one change a poll found, linked to the poll's span: one trace per change,
    however many changes one poll enqueues."""
    from opentelemetry import context, trace

    poll = trace.get_current_span().get_span_context()
    links = [trace.Link(poll)] if poll.is_valid else []
    with tracer().start_as_current_span(
        name, context=context.Context(), kind=_kind("producer"), links=links, attributes=ids_of(attributes or {})
    ) as current:
        yield current


@contextlib.contextmanager
def continued_trace(
    name: str, traceparent: str | None, tracestate: str | None, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A consumer span continuing the trace a queue message carries (the change's trace), linked to
    the current span (the host's invocation in Azure); without a carried context, a child of the
    current span."""
    from opentelemetry import trace

    carrier = {"traceparent": traceparent} if traceparent and valid_traceparent(traceparent) else {}
    if carrier and tracestate:
        carrier["tracestate"] = tracestate
    current = trace.get_current_span().get_span_context()
    parent = _propagator().extract(carrier) if carrier else None
    links = [trace.Link(current)] if parent is not None and current.is_valid else []
    with tracer().start_as_current_span(
        name, context=parent, kind=_kind("consumer"), links=links, attributes=ids_of(attributes or {})
    ) as consumer:
        yield consumer


def error_reason(message: str) -> str:
    """A groupable reason from a plain-words error: the words before the first colon, without ids
    (anything with a digit in it), so "errors by reason" adds up across records."""
    head = message.split(":", 1)[0]
    words = [word for word in head.split() if not any(ch.isdigit() for ch in word)]
    return " ".join(words)[:120] or "unknown"
