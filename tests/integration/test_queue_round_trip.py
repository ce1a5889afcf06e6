"""A message from our producer is decoded by the local host exactly as the Functions runtime would."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from azure.storage.queue import QueueClient

from sandbox.azurite import Azurite
from shared.sync.queues import CrmChange, PartnerCenterChange, QueueProducer, parse_sync_request
from shared.sync.storage import StorageAccount

pytestmark = pytest.mark.azurite


def test_producer_writes_base64_json_that_the_trigger_decodes(azurite: Azurite, storage: StorageAccount) -> None:
    queue = f"roundtrip-{uuid.uuid4().hex[:8]}"
    producer = QueueProducer(storage)
    sent = PartnerCenterChange(referral_id="8c0f4d7e-2b9a-4c61-9e3f-5a1d2c7b8e90", event="referral-updated")
    producer.send(sent, queue=queue)

    raw = QueueClient.from_connection_string(azurite.connection_string, queue)  # no decode policy: the wire text
    (message,) = list(raw.receive_messages(max_messages=1))
    wire_text = str(message.content)
    decoded = base64.b64decode(wire_text, validate=True)  # what the Functions runtime does with base64 encoding
    assert json.loads(decoded)["source"] == "pc"
    # The producer adds the current trace context (when a tracer is configured); the rest is as sent.
    assert parse_sync_request(decoded).model_copy(update={"traceparent": None, "tracestate": None}) == sent


def test_both_message_kinds_validate_and_bad_ones_are_refused() -> None:
    crm = CrmChange(object="opportunity", record_id="006XX0001")
    assert parse_sync_request(crm.model_dump_json()) == crm
    with pytest.raises(ValueError):
        parse_sync_request(b'{"source": "pc", "event": "referral-created"}')  # no referral id
    with pytest.raises(ValueError):
        parse_sync_request(b'{"source": "erp", "record_id": "1"}')


def test_queue_depth_counts_waiting_messages(storage: StorageAccount) -> None:
    queue = f"depth-{uuid.uuid4().hex[:8]}"
    producer = QueueProducer(storage)
    assert producer.depth(queue) == 0
    for index in range(3):
        producer.send(CrmChange(object="lead", record_id=f"00Q{index}"), queue=queue)
    assert producer.depth(queue) == 3
