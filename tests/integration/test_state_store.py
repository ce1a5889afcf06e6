"""The state store on a real Azurite: links, ETag races, audit order, watermarks, dead letters."""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest

from shared.sync.engine import LinkBusyError, SyncEngine
from shared.sync.state import (
    AlreadyExistsError,
    ConcurrencyConflictError,
    Link,
    StateStore,
    link_id_for_crm,
    link_id_for_referral,
)
from shared.sync.storage import StorageAccount
from tests.fakes.world import World

pytestmark = pytest.mark.azurite


@pytest.fixture
def state(storage: StorageAccount) -> StateStore:
    return StateStore(storage)


def new_referral_id() -> str:
    return str(uuid.uuid4())


def test_create_read_update_a_link_with_its_reverse_index(state: StateStore) -> None:
    referral_id = new_referral_id()
    created = state.create_link(
        Link(
            link_id=link_id_for_referral(referral_id),
            referral_id=referral_id,
            snapshot={"name": "Contoso"},
            pc_etag='"e1"',
        )
    )
    assert created.etag

    found = state.find_link_by_referral(referral_id)
    assert found is not None and found.snapshot == {"name": "Contoso"} and found.pc_etag == '"e1"'

    updated = state.save_link(
        found.model_copy(update={"crm_object": "opportunity", "crm_id": "006XX0001", "state": "linked"})
    )
    assert updated.etag != found.etag
    by_crm = state.find_link_by_crm("opportunity", "006XX0001")
    assert by_crm is not None and by_crm.link_id == created.link_id and by_crm.crm_id == "006XX0001"


def test_the_reverse_index_follows_a_link_that_moves_to_another_record(state: StateStore) -> None:
    """A lead converted into an opportunity: the link follows, the old index row goes."""
    referral_id = new_referral_id()
    link = state.create_link(
        Link(link_id=link_id_for_referral(referral_id), referral_id=referral_id, crm_object="lead", crm_id="00QXX1")
    )
    state.save_link(link.model_copy(update={"crm_object": "opportunity", "crm_id": "006XX2"}))
    assert state.find_link_by_crm("lead", "00QXX1") is None
    moved = state.find_link_by_crm("opportunity", "006XX2")
    assert moved is not None and moved.link_id == link.link_id


def test_creating_the_same_link_twice_is_refused(state: StateStore) -> None:
    referral_id = new_referral_id()
    state.create_link(Link(link_id=link_id_for_referral(referral_id), referral_id=referral_id))
    with pytest.raises(AlreadyExistsError):
        state.create_link(Link(link_id=link_id_for_referral(referral_id), referral_id=referral_id))


def test_two_writers_racing_on_one_link_one_gets_the_conflict(state: StateStore) -> None:
    referral_id = new_referral_id()
    state.create_link(Link(link_id=link_id_for_referral(referral_id), referral_id=referral_id))
    first = state.find_link_by_referral(referral_id)
    second = state.find_link_by_referral(referral_id)
    assert first is not None and second is not None

    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def write(link: Link, value: str) -> None:
        barrier.wait()
        try:
            state.save_link(link.model_copy(update={"snapshot": {"writer": value}}))
            outcomes.append("saved")
        except ConcurrencyConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(first, "a")), threading.Thread(target=write, args=(second, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "saved"]
    final = state.find_link_by_referral(referral_id)
    assert final is not None and final.snapshot["writer"] in ("a", "b")


def test_a_large_snapshot_round_trips_across_property_chunks(state: StateStore) -> None:
    referral_id = new_referral_id()
    notes = "Ünïcode notes " * 6000  # ~84k characters: more than one table property holds
    state.create_link(
        Link(link_id=link_id_for_referral(referral_id), referral_id=referral_id, snapshot={"notes": notes})
    )
    found = state.find_link_by_referral(referral_id)
    assert found is not None and found.snapshot["notes"] == notes


def test_a_crm_born_link_in_creating_state_is_found_by_crm_id(state: StateStore) -> None:
    crm_id = f"006{uuid.uuid4().hex[:12]}"
    state.create_link(
        Link(link_id=link_id_for_crm("opportunity", crm_id), crm_object="opportunity", crm_id=crm_id, state="creating")
    )
    intents = {link.link_id for link in state.list_links(state="creating")}
    assert link_id_for_crm("opportunity", crm_id) in intents
    found = state.find_link_by_crm("opportunity", crm_id)
    assert found is not None and found.state == "creating" and found.referral_id is None


@pytest.mark.parametrize("bad_id", ["a/b", "a#b", "a?b", "a\\b", ""])
def test_ids_that_cannot_be_table_keys_are_refused_with_a_clear_error(state: StateStore, bad_id: str) -> None:
    with pytest.raises(ValueError, match="cannot be used as a table key"):
        link_id_for_referral(bad_id)


def test_audit_is_read_newest_first_with_a_limit(state: StateStore) -> None:
    link_id = link_id_for_referral(new_referral_id())
    for index in range(7):
        state.append_audit(link_id, direction="pc->crm", outcome="synced", message=f"change {index}")
    entries = state.list_audit(link_id, limit=3)
    assert [entry.message for entry in entries] == ["change 6", "change 5", "change 4"]
    assert len(state.list_audit(link_id, limit=50)) == 7
    assert state.list_audit(link_id, limit=0) == []


def test_watermark_round_trip_and_concurrent_update_is_refused(state: StateStore) -> None:
    name = f"crm-poll-{uuid.uuid4().hex[:8]}"
    assert state.get_watermark(name) is None
    saved = state.save_watermark(name, "2026-11-21T10:00:00Z")
    read = state.get_watermark(name)
    assert read is not None and read.value == "2026-11-21T10:00:00Z"
    state.save_watermark(name, "2026-11-21T10:01:00Z", etag=read.etag)
    with pytest.raises(ConcurrencyConflictError):
        state.save_watermark(name, "2026-11-21T09:00:00Z", etag=saved.etag)  # a stale poller cannot move it back
    with pytest.raises(ConcurrencyConflictError):
        state.save_watermark(name, "2026-11-21T09:00:00Z")  # nor create it twice
    final = state.get_watermark(name)
    assert final is not None and final.value == "2026-11-21T10:01:00Z"


def test_a_dead_letter_carries_the_last_recorded_failure(state: StateStore) -> None:
    payload = f'{{"source":"pc","referral_id":"{new_referral_id()}","event":"referral-updated"}}'
    before = state.count_dead_letters()
    state.record_failure("sync", payload, "SalesforceError: REQUEST_LIMIT_EXCEEDED", 5)
    letter = state.record_dead_letter(queue="sync", payload=payload, dequeue_count=1)
    assert letter.reason == "SalesforceError: REQUEST_LIMIT_EXCEEDED"
    assert letter.dequeue_count == 5
    assert state.last_failure("sync", payload) is None  # consumed by the dead letter
    assert state.count_dead_letters() == before + 1
    stored = state.get_dead_letter(letter.id)
    assert stored is not None and stored.payload == payload
    assert state.list_dead_letters(limit=1)[0].id == letter.id  # newest first
    state.mark_dead_letter_replayed(letter.id)
    assert state.count_dead_letters() == before


def test_a_links_lease_round_trips_and_only_one_of_two_racing_workers_takes_it(state: StateStore) -> None:
    """The per-link lease (issue 19) is two columns on the link row, taken under its ETag."""
    referral_id = new_referral_id()
    link = state.create_link(Link(link_id=link_id_for_referral(referral_id), referral_id=referral_id))
    assert link.lease_owner is None and link.lease_until is None  # a row without the columns reads as free
    until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
    first = state.save_link(link.model_copy(update={"lease_owner": "worker-a", "lease_until": until}))
    with pytest.raises(ConcurrencyConflictError):
        state.save_link(link.model_copy(update={"lease_owner": "worker-b", "lease_until": until}))
    stored = state.get_link(first.link_id)
    assert stored is not None and stored.lease_owner == "worker-a" and stored.lease_until == until
    assert stored.leased_to_another("worker-b", dt.datetime.now(dt.UTC))
    assert not stored.leased_to_another("worker-b", until + dt.timedelta(seconds=1))  # expired: free again


def test_two_engines_on_one_store_post_one_referral_for_one_new_record(storage: StorageAccount) -> None:
    """Two messages for one new CRM record, the second arriving while the first one's POST is on
    its way: with the link store on Azurite, the second waits (LinkBusyError) instead of posting."""
    world = World.build()
    store = StateStore(storage, clock=world.clock)
    world.engine.state = store
    ref = world.seller_deal()  # the fake CRM's ids are unique within this test session's Azurite
    second = SyncEngine(
        settings=world.engine.settings, state=store, partner_center=world.pc, crm=world.crm, clock=world.clock
    )
    real_create = world.pc.create_referral
    busy: list[LinkBusyError] = []

    def second_message_meanwhile(body: object) -> object:
        try:
            second.sync_crm_record(ref)
        except LinkBusyError as error:
            busy.append(error)
        return real_create(body)  # type: ignore[arg-type]

    world.pc.create_referral = second_message_meanwhile  # type: ignore[assignment,method-assign]
    world.engine.sync_crm_record(ref)
    assert len(world.pc.posts) == 1 and len(busy) == 1
    link = store.find_link_by_crm("opportunity", ref.id)
    assert link is not None and link.state == "linked" and link.lease_owner is None
