"""Queue messages and the producer that puts them on the `sync` queue.

Messages are small JSON documents (ids, never whole records), validated by pydantic on both ends.
On the wire they are base64-encoded text: that is what the Functions queue trigger expects by
default (host.json `messageEncoding: base64`), so the SDK producer sets the matching encode policy.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from shared import telemetry
from shared.sync.storage import StorageAccount

SYNC_QUEUE = "sync"
SYNC_POISON_QUEUE = "sync-poison"
_PARALLEL_SENDS = 8  # within urllib3's default pool of 10 connections


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # W3C trace context of the change's trace (shared/telemetry.py), so the worker's spans join it.
    traceparent: str | None = Field(default=None, max_length=55)
    tracestate: str | None = Field(default=None, max_length=512)

    @field_validator("traceparent")
    @classmethod
    def _drop_damaged_trace_context(cls, value: str | None) -> str | None:
        return telemetry.valid_traceparent(value)  # never dead-letter a change for its telemetry


class PartnerCenterChange(_Message):
    """A referral changed in Partner Center (webhook or reconcile poll): make its link consistent."""

    source: Literal["pc"] = "pc"
    referral_id: str = Field(min_length=1, max_length=100)
    event: str = Field(min_length=1, max_length=100, description="webhook event name, or 'reconcile'")
    received_at: dt.datetime = Field(default_factory=_utc_now)


class CrmChange(_Message):
    """A CRM record changed (CRM poll): make its link consistent."""

    source: Literal["crm"] = "crm"
    object: Literal["opportunity", "lead"]
    record_id: str = Field(min_length=1, max_length=100)
    received_at: dt.datetime = Field(default_factory=_utc_now)


SyncRequest = Annotated[PartnerCenterChange | CrmChange, Field(discriminator="source")]
_sync_request_adapter: TypeAdapter[PartnerCenterChange | CrmChange] = TypeAdapter(SyncRequest)


def parse_sync_request(body: str | bytes) -> PartnerCenterChange | CrmChange:
    """Decode a `sync` queue message body (already base64-decoded); raises pydantic's ValidationError."""
    return _sync_request_adapter.validate_json(body)


def encode_sync_request(message: PartnerCenterChange | CrmChange) -> str:
    return message.model_dump_json(exclude_none=True)


def message_attributes(message: PartnerCenterChange | CrmChange) -> dict[str, str]:
    """The ids a sync request names, as span / log attributes."""
    if isinstance(message, PartnerCenterChange):
        return telemetry.ids_of(
            {telemetry.SOURCE: "pc", telemetry.REFERRAL_ID: message.referral_id, telemetry.EVENT: message.event}
        )
    return telemetry.ids_of(
        {telemetry.SOURCE: "crm", telemetry.CRM_OBJECT: message.object, telemetry.CRM_RECORD_ID: message.record_id}
    )


class QueueProducer:
    """Sends messages to our queues; creates each queue on first use."""

    def __init__(self, storage: StorageAccount) -> None:
        self._storage = storage
        self._created: set[str] = set()
        self._lock = threading.Lock()

    def _queue(self, name: str) -> Any:
        client = self._storage.queue_client(name)
        with self._lock:
            if name not in self._created:
                self._storage.ensure_queue(client)
                self._created.add(name)
        return client

    def send(self, message: PartnerCenterChange | CrmChange, *, queue: str = SYNC_QUEUE) -> str:
        """Enqueue one message carrying the current trace; returns the storage message id."""
        with telemetry.span(f"enqueue {queue}", message_attributes(message), kind="producer"):
            carried = telemetry.current_trace_context()
            if carried and message.traceparent is None:
                message = message.model_copy(update=carried)
            sent = self._queue(queue).send_message(encode_sync_request(message))
        return str(sent.id)

    def send_all(self, messages: Sequence[PartnerCenterChange | CrmChange], *, queue: str = SYNC_QUEUE) -> int:
        """Enqueue many messages, several calls at a time (the queue API takes one message per
        call); returns how many. Raises the first failure once the other calls have finished."""
        client = self._queue(queue)
        with ThreadPoolExecutor(max_workers=_PARALLEL_SENDS) as pool:
            for _ in pool.map(lambda message: client.send_message(encode_sync_request(message)), messages):
                pass
        return len(messages)

    def send_text(self, text: str, *, queue: str, delay_seconds: float = 0) -> str:
        """Enqueue a raw text body (a dead letter replayed, a message for a busy link delayed)
        exactly as it was; `delay_seconds` keeps it invisible that long (whole seconds, rounded up)."""
        delay = math.ceil(delay_seconds) if delay_seconds > 0 else None
        sent = self._queue(queue).send_message(text, visibility_timeout=delay)
        return str(sent.id)

    def depth(self, queue: str) -> int:
        """Approximate number of messages waiting (0 for a queue that does not exist yet)."""
        properties = self._queue(queue).get_queue_properties()
        return int(properties.approximate_message_count or 0)
