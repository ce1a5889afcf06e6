"""The `sync` queue worker: a message that can never succeed becomes a dead letter at once."""

from __future__ import annotations

import uuid

import pytest

from shared.sync import worker
from shared.sync.engine import SyncEngine
from shared.sync.queues import SYNC_QUEUE
from shared.sync.state import StateStore
from shared.sync.storage import StorageAccount

pytestmark = pytest.mark.azurite


def no_engine() -> SyncEngine:
    raise AssertionError("the engine must not run for a message that is not a sync request")


@pytest.mark.parametrize("payload", ["not json", '{"source": "crm", "object": "contract", "record_id": "x"}'])
def test_an_invalid_message_is_dead_lettered_without_retries(storage: StorageAccount, payload: str) -> None:
    state = StateStore(storage)
    unique = f"{payload} {uuid.uuid4()}" if payload == "not json" else payload.replace('"x"', f'"{uuid.uuid4()}"')
    worker.process(lambda: state, no_engine, payload=unique, dequeue_count=1)
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
        worker.process(lambda: state, lambda: Outage(), payload=payload, dequeue_count=2)  # type: ignore[arg-type,return-value]
    note = state.last_failure(SYNC_QUEUE, payload)
    assert note is not None and "Partner Center is down" in note.error and note.dequeue_count == 2
