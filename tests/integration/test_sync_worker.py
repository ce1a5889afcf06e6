"""The `sync` queue worker: a message that can never succeed becomes a dead letter at once."""

from __future__ import annotations

import uuid

import pytest

from shared.sync import worker
from shared.sync.engine import LinkBusyError, SyncEngine
from shared.sync.queues import SYNC_QUEUE, QueueProducer
from shared.sync.state import StateStore
from shared.sync.storage import StorageAccount
from tests.waiting import wait_until

pytestmark = pytest.mark.azurite


def no_producer() -> QueueProducer:
    raise AssertionError("nothing is sent back to the queue here")


def no_engine() -> SyncEngine:
    raise AssertionError("the engine must not run for a message that is not a sync request")


@pytest.mark.parametrize("payload", ["not json", '{"source": "crm", "object": "contract", "record_id": "x"}'])
def test_an_invalid_message_is_dead_lettered_without_retries(storage: StorageAccount, payload: str) -> None:
    state = StateStore(storage)
    unique = f"{payload} {uuid.uuid4()}" if payload == "not json" else payload.replace('"x"', f'"{uuid.uuid4()}"')
    worker.process(lambda: state, no_engine, no_producer, payload=unique, dequeue_count=1)
    letter = next(letter for letter in state.list_dead_letters(limit=50) if letter.payload == unique)
    assert letter.queue == SYNC_QUEUE
    assert "not a valid sync request" in letter.reason


def test_a_failing_sync_records_the_reason_and_raises_for_a_retry(storage: StorageAccount) -> None:
    state = StateStore(storage)
    payload = f'{{"source": "pc", "referral_id": "{uuid.uuid4()}", "event": "referral-updated"}}'

    class Outage:
        def handle(self, request: object) -> None:
            raise RuntimeError("Partner Center is down")

    with pytest.raises(RuntimeError, match="Partner Center is down"):
        worker.process(lambda: state, lambda: Outage(), no_producer, payload=payload, dequeue_count=2)  # type: ignore[arg-type,return-value]
    note = state.last_failure(SYNC_QUEUE, payload)
    assert note is not None and "Partner Center is down" in note.error and note.dequeue_count == 2


def test_a_message_for_a_busy_link_comes_back_after_a_short_delay_without_using_a_delivery(
    storage: StorageAccount,
) -> None:
    state, producer = StateStore(storage), QueueProducer(storage)
    queue = producer._queue(SYNC_QUEUE)
    queue.clear_messages()
    payload = f'{{"source": "pc", "referral_id": "{uuid.uuid4()}", "event": "referral-updated"}}'

    class Busy:
        def handle(self, request: object) -> None:
            raise LinkBusyError("link pc-1 is being synced by another worker", retry_after_seconds=2)

    worker.process(lambda: state, lambda: Busy(), lambda: producer, payload=payload, dequeue_count=1)  # type: ignore[arg-type,return-value]
    assert state.last_failure(SYNC_QUEUE, payload) is None  # not a failure
    assert list(queue.receive_messages()) == []  # invisible for now
    (message,) = wait_until(lambda: list(queue.receive_messages()), timeout=10, what="the delayed message")
    assert message.content == payload and message.dequeue_count == 1  # the same text, its first delivery
