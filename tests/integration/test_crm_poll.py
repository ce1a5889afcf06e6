"""The CRM poll on a real Azurite against both CRM simulators (issue 20): bulk changes are queued
exactly once, the stored position stays small, time boundaries are exact, and a failing poll does
not queue the window again."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from sandbox import credentials, dataverse, salesforce
from sandbox.azurite import start_azurite
from sandbox.identity import identity_factory
from sandbox.server import RunningServer, serve
from sandbox.tls import ensure_ca
from shared.crm.dynamics import DynamicsCrm
from shared.crm.port import CrmPort
from shared.crm.salesforce import SalesforceAdapter
from shared.crm.watermark import PAGE_SIZE
from shared.settings import load_settings
from shared.sync import polling
from shared.sync.queues import SYNC_QUEUE, QueueProducer
from shared.sync.state import WATERMARKS_TABLE, StateStore
from shared.sync.storage import StorageAccount
from tests.conftest import base_environment

T0 = dt.datetime(2026, 11, 2, 10, 0, 0, 400_000, tzinfo=dt.UTC)
TABLE_PROPERTY_LIMIT = 64 * 1024
TABLE_ENTITY_LIMIT = 1024 * 1024


@dataclass
class Org:
    """One CRM simulator and our adapter on it; `write` is a seller's bulk write at given times."""

    name: str
    crm: CrmPort
    write: Callable[[Sequence[tuple[str | None, dict[str, Any], dt.datetime]]], list[str]]
    sync_yes: dict[str, Any]
    edit: dict[str, Any]

    def create(self, count: int, at: Callable[[int], dt.datetime], **extra: Any) -> list[str]:
        values = {**self.sync_yes, **extra}
        return self.write([(None, {**values, **self._name(n)}, at(n)) for n in range(count)])

    def _name(self, n: int) -> dict[str, Any]:
        if self.name == "salesforce":
            return {"Name": f"Opportunity {n}", "StageName": "Qualification", "CloseDate": "2026-12-31"}
        return {"name": f"Opportunity {n}"}


@pytest.fixture(scope="module")
def identity() -> Iterator[RunningServer]:
    server = serve(identity_factory(), port=0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["salesforce", "dynamics"])
def org(request: pytest.FixtureRequest, identity: RunningServer) -> Iterator[Org]:
    ca = str(ensure_ca().cert_path)
    if request.param == "salesforce":
        server = serve(lambda url: salesforce.SalesforceSimulator(url))
        simulator = server.simulator
        assert isinstance(simulator, salesforce.SalesforceSimulator)
        settings = load_settings(
            base_environment(
                "UseDevelopmentStorage=true",
                SALESFORCE_LOGIN_URL=server.url,
                TLS_CA_BUNDLE=ca,
                SALESFORCE_API_VERSION="62.0",
            )
        )
        adapter: CrmPort = SalesforceAdapter(settings)
        yield Org(
            "salesforce",
            adapter,
            lambda writes: salesforce.write_as_seller(simulator, "Opportunity", writes),
            {"PCS_Sync_With_Partner_Center__c": True},
            {"Description": "seller edit"},
        )
    else:
        server = serve(dataverse.dataverse_factory(), port=0)
        org_simulator = server.simulator
        assert isinstance(org_simulator, dataverse.DataverseSimulator)
        settings = load_settings(
            base_environment(
                "UseDevelopmentStorage=true",
                CRM_KIND="dynamics",
                DATAVERSE_URL=server.url,
                DATAVERSE_TENANT_ID=credentials.TENANT_ID,
                DATAVERSE_CLIENT_ID=credentials.DATAVERSE_CLIENT_ID,
                DATAVERSE_CLIENT_SECRET=credentials.DATAVERSE_CLIENT_SECRET,
                DATAVERSE_AUTHORITY_HOST=identity.url,
                TLS_CA_BUNDLE=ca,
            )
        )
        dynamics = DynamicsCrm(settings, page_size=5000)
        adapter = dynamics
        yield Org(
            "dynamics",
            adapter,
            lambda writes: dataverse.write_as_seller(org_simulator, "opportunity", writes),
            {"pcs_syncwithpartnercenter": True},
            {"description": "seller edit"},
        )
        dynamics.http.close()
    server.stop()
    assert server.errors == []


@pytest.fixture
def state(storage: StorageAccount, org: Org) -> Iterator[StateStore]:
    """The state store with this CRM's poll position and the `sync` queue cleared before and after
    (the tests share one Azurite with the rest of the suite)."""
    store = StateStore(storage)
    _clear(storage, polling.crm_watermark_name(org.crm))
    yield store
    _clear(storage, polling.crm_watermark_name(org.crm))


def _clear(storage: StorageAccount, poller: str) -> None:
    table = storage.table_client(WATERMARKS_TABLE)
    storage.ensure_table(table)
    for partition in ("watermark", f"reported-{poller}"):
        rows = table.query_entities("PartitionKey eq @pk", parameters={"pk": partition}, select=["RowKey"])
        keys = [row["RowKey"] for row in rows if partition != "watermark" or row["RowKey"] == poller]
        for start in range(0, len(keys), 100):
            table.submit_transaction(
                [("delete", {"PartitionKey": partition, "RowKey": key}) for key in keys[start : start + 100]]
            )
    queue = storage.queue_client(SYNC_QUEUE)
    storage.ensure_queue(queue)
    queue.clear_messages()


def _drain(storage: StorageAccount) -> Counter[str]:
    """Every record id on the `sync` queue, with how often it is there; the queue is left empty."""
    queue = storage.queue_client(SYNC_QUEUE)
    found: Counter[str] = Counter()
    while batch := list(queue.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=600)):
        found.update(json.loads(message.content)["record_id"] for message in batch)
    queue.clear_messages()  # one call instead of one per message
    return found


class _RecordingQueue(QueueProducer):
    """The real producer, also keeping the record ids it sent (reading 10,000 messages back 32 at
    a time would take most of the test's time)."""

    def __init__(self, storage: StorageAccount) -> None:
        super().__init__(storage)
        self.sent: Counter[str] = Counter()

    def send_all(self, messages: Sequence[Any], *, queue: str = SYNC_QUEUE) -> int:
        count = super().send_all(messages, queue=queue)
        self.sent.update(message.record_id for message in messages)
        return count


@pytest.fixture
def own_storage() -> Iterator[StorageAccount]:
    """An Azurite of the test's own: after 10,000 messages the emulator slows down for whoever
    uses it next (seen as 30 s timeouts in the next test)."""
    server = start_azurite()
    try:
        yield StorageAccount(connection_string=server.connection_string)
    finally:
        server.stop()


def _entity_size(entity: dict[str, Any]) -> tuple[int, int]:
    """(entity size, largest property) by Table storage's size rules: strings are UTF-16."""

    def value_size(value: Any) -> int:
        return 2 * len(value) + 4 if isinstance(value, str) else 8

    properties = {name: value_size(value) for name, value in entity.items()}
    keys = 2 * (len(entity["PartitionKey"]) + len(entity["RowKey"]))
    size = 4 + keys + sum(8 + 2 * len(name) + size for name, size in properties.items() if not name.endswith("Key"))
    return size, max(properties.values())


# 10,000 queue messages dominate: Azurite takes one message per call (seconds on an idle laptop,
# minutes on a loaded shared machine).
@pytest.mark.timeout(900)
def test_a_bulk_change_of_10000_records_is_queued_exactly_once(org: Org, own_storage: StorageAccount) -> None:
    storage = own_storage
    state = StateStore(storage)
    # One bulk update: 10,000 records within 20 seconds of CRM time, many sharing a stamp.
    ids = org.create(10_000, lambda n: T0 + dt.timedelta(milliseconds=2 * n))
    producer = _RecordingQueue(storage)

    first = polling.poll_crm(org.crm, state, producer)
    second = polling.poll_crm(org.crm, state, producer)
    idle = polling.poll_crm(org.crm, state, producer)

    # One poll queues at most MAX_QUEUED_PER_POLL; the next goes on where it stopped.
    assert (first, second, idle) == (polling.MAX_QUEUED_PER_POLL, 10_000 - polling.MAX_QUEUED_PER_POLL, 0)
    assert sorted(producer.sent) == sorted(ids) and set(producer.sent.values()) == {1}
    assert producer.depth(SYNC_QUEUE) == 10_000  # and they all arrived
    cursor = storage.table_client(WATERMARKS_TABLE).get_entity("watermark", polling.crm_watermark_name(org.crm))
    size, largest = _entity_size(dict(cursor))
    print(f"{org.name}: poll cursor entity after 10,000 changes: {size} bytes")
    assert size < 4096 and largest < TABLE_PROPERTY_LIMIT < TABLE_ENTITY_LIMIT
    pages = storage.table_client(WATERMARKS_TABLE).query_entities(
        "PartitionKey eq @pk", parameters={"pk": f"reported-{polling.crm_watermark_name(org.crm)}"}
    )
    sizes = [_entity_size(dict(page)) for page in pages]
    print(f"{org.name}: {len(sizes)} page rows, the largest {max(size for size, _ in sizes)} bytes")
    assert len(sizes) == 10_000 // PAGE_SIZE  # one row per page of changes in the overlap window
    assert all(size < TABLE_ENTITY_LIMIT // 8 and largest < TABLE_PROPERTY_LIMIT for size, largest in sizes)

    # A seller edits one record after the window has moved on: only it is queued, and the rows
    # of the bulk change are forgotten once the window is past them.
    later = T0 + dt.timedelta(minutes=10)
    org.write([(ids[1234], org.edit, later)])
    producer.sent.clear()
    assert polling.poll_crm(org.crm, state, producer) == 1
    assert polling.poll_crm(org.crm, state, producer) == 0
    assert producer.sent == Counter({ids[1234]: 1})
    assert [len(keys) for keys in state.remembered_pages(polling.crm_watermark_name(org.crm)).values()] == [1]


def test_a_frozen_clock_on_a_sub_second_boundary_queues_each_record_once(
    org: Org, state: StateStore, storage: StorageAccount
) -> None:
    overlap = org.crm.poll_overlap
    early = org.create(3, lambda n: T0)  # 10:00:00.400
    # Exactly one overlap later plus 0.2 s: the window starts inside the second of the early ones.
    late = org.create(2, lambda n: T0 + overlap + dt.timedelta(milliseconds=200))
    producer = QueueProducer(storage)

    counts = [polling.poll_crm(org.crm, state, producer) for _ in range(4)]

    assert counts == [5, 0, 0, 0]
    assert _drain(storage) == Counter({record_id: 1 for record_id in early + late})


def test_ties_across_poll_runs_and_a_late_commit_are_each_queued_once(
    org: Org, state: StateStore, storage: StorageAccount
) -> None:
    tied = org.create(7, lambda n: T0)
    producer = QueueProducer(storage)

    # Runs of 3 records stop in the middle of the tie; the next run goes on after the last one.
    counts = [polling.poll_crm(org.crm, state, producer, max_queued=3) for _ in range(4)]
    assert counts == [3, 3, 1, 0]
    # A transaction that commits late with an earlier stamp, inside the overlap.
    (late,) = org.create(1, lambda n: T0 - dt.timedelta(seconds=30))
    assert polling.poll_crm(org.crm, state, producer) == 1
    assert polling.poll_crm(org.crm, state, producer) == 0
    assert _drain(storage) == Counter({record_id: 1 for record_id in [*tied, late]})


class _BrokenStore(StateStore):
    """The real store, refusing writes from the `fail_at`-th save of the poll position on."""

    def __init__(self, storage: StorageAccount, fail_at: int) -> None:
        super().__init__(storage)
        self.fail_at = fail_at
        self.saves = 0

    def save_watermark(self, name: str, value: str, *, etag: str | None = None) -> Any:
        self.saves += 1
        if self.saves >= self.fail_at:
            raise OSError("storage refused the write (injected)")
        return super().save_watermark(name, value, etag=etag)


class _BrokenQueue(QueueProducer):
    """The real producer, failing once after `fail_after` messages."""

    def __init__(self, storage: StorageAccount, fail_after: int) -> None:
        super().__init__(storage)
        self.left: int | None = fail_after

    def send_all(self, messages: Sequence[Any], *, queue: str = SYNC_QUEUE) -> int:
        if self.left is not None and len(messages) > self.left:
            super().send_all(messages[: self.left], queue=queue)
            self.left = None
            raise OSError("the queue service failed (injected)")
        if self.left is not None:
            self.left -= len(messages)
        return super().send_all(messages, queue=queue)


def test_storage_refusing_writes_queues_nothing_more_and_loses_nothing(
    org: Org, state: StateStore, storage: StorageAccount
) -> None:
    ids = org.create(2 * PAGE_SIZE, lambda n: T0 + dt.timedelta(milliseconds=10 * n))
    broken = _BrokenStore(storage, fail_at=2)  # one page goes out, then storage refuses writes

    with pytest.raises(OSError, match="injected"):
        polling.poll_crm(org.crm, broken, QueueProducer(storage))
    first = _drain(storage)
    assert len(first) == PAGE_SIZE and set(first) <= set(ids)
    for _ in range(5):  # storage stays broken: every poll fails before queuing anything
        with pytest.raises(OSError, match="injected"):
            polling.poll_crm(org.crm, broken, QueueProducer(storage))
    assert _drain(storage) == Counter()

    # Storage is back: the poll finishes the page it was queuing (once more: storage refused the
    # write saying it was done) and goes on after it; nothing else is queued twice.
    assert polling.poll_crm(org.crm, state, QueueProducer(storage)) == 2 * PAGE_SIZE
    assert polling.poll_crm(org.crm, state, QueueProducer(storage)) == 0
    rest = _drain(storage)
    assert set(rest.values()) == {1} and set(rest) == set(ids)


def test_a_queue_failure_mid_page_requeues_at_most_that_page(
    org: Org, state: StateStore, storage: StorageAccount
) -> None:
    ids = org.create(2 * PAGE_SIZE, lambda n: T0 + dt.timedelta(milliseconds=10 * n))

    with pytest.raises(OSError, match="injected"):
        polling.poll_crm(org.crm, state, _BrokenQueue(storage, fail_after=PAGE_SIZE // 2))
    assert polling.poll_crm(org.crm, state, QueueProducer(storage)) == 2 * PAGE_SIZE
    assert polling.poll_crm(org.crm, state, QueueProducer(storage)) == 0

    queued = _drain(storage)
    assert set(queued) == set(ids)  # nothing lost
    assert sum(queued.values()) == 2 * PAGE_SIZE + PAGE_SIZE // 2  # the half page sent before the failure, again


def test_the_first_poll_of_an_empty_crm_queues_nothing(org: Org, state: StateStore, storage: StorageAccount) -> None:
    assert polling.poll_crm(org.crm, state, QueueProducer(storage)) == 0
    assert polling.poll_crm(org.crm, state, QueueProducer(storage)) == 0


def test_health_reports_polls_that_stopped_half_way(org: Org, state: StateStore, storage: StorageAccount) -> None:
    org.create(2, lambda n: T0)
    with pytest.raises(OSError, match="injected"):  # the page goes out, then saving the cursor fails
        polling.poll_crm(org.crm, _BrokenStore(storage, fail_at=2), QueueProducer(storage))

    body, healthy = polling.crm_poll_health(state, org.name)
    assert healthy and body["unfinished_page"] is True  # a poll may be running right now
    later = dt.datetime.now(dt.UTC) + polling.POLL_STALLED_AFTER + dt.timedelta(minutes=1)
    body, healthy = polling.crm_poll_health(state, org.name, now=lambda: later)
    assert not healthy and "poll_crm_changes" in body["problem"]

    assert polling.poll_crm(org.crm, state, QueueProducer(storage)) == 2  # the unfinished page, again
    body, healthy = polling.crm_poll_health(state, org.name, now=lambda: later)
    assert healthy and body == {
        "newest_change": T0.replace(microsecond=0 if org.name == "dynamics" else T0.microsecond).isoformat(),
        "saved_at": body["saved_at"],
        "unfinished_page": False,
    }
