"""Races the chaos runs found (issue 19), each made deterministic with the fakes' hooks: a seller's
edit landing between the engine's first read and its re-read, two messages for one new record, a
stray referral carrying a CRM record's id."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from shared.crm.port import CrmRef, CrmTransientError, RecordUpdate, StageFacts
from shared.partner_center.client import PartnerCenterUnavailableError
from shared.sync.engine import LinkBusyError
from shared.sync.state import link_id_for_crm
from tests.fakes.world import World, incoming


def _outgoing(world: World) -> tuple[str, CrmRef]:
    ref = world.seller_deal()
    world.engine.sync_crm_record(ref)
    (referral_id,) = world.pc.referrals
    world.clock.advance(60)
    return referral_id, ref


def test_a_seller_edit_landing_while_we_write_partner_centers_change_is_sent_not_absorbed() -> None:
    world = World.build()
    referral_id, ref = _outgoing(world)

    def seller_meanwhile(written: CrmRef) -> None:
        world.clock.advance(1)
        world.crm.seller_edits(written, RecordUpdate(deal_value=Decimal(150000)))

    world.crm.after_write = seller_meanwhile
    world.pc_edits(referral_id, **{"details.notes": "PC notes"})
    world.engine.sync_crm_record(ref)  # the next poll
    assert world.crm.read(ref).notes == "PC notes"
    assert world.pc.referrals[referral_id]["details"]["dealValue"] == 150000.0
    assert "deal value" in world.audit(ref).splitlines()[0]


def test_a_seller_edit_landing_while_we_create_the_referral_is_sent_after_it() -> None:
    world = World.build()
    ref = world.seller_deal()

    def seller_meanwhile(written: CrmRef) -> None:
        world.clock.advance(1)
        world.crm.seller_edits(written, RecordUpdate(notes="Edited during the create"))

    world.crm.after_write = seller_meanwhile
    world.engine.sync_crm_record(ref)
    world.clock.advance(60)
    world.engine.sync_crm_record(ref)  # the next poll
    (referral,) = world.pc.referrals.values()
    assert referral["details"]["notes"] == "Edited during the create"


def test_a_second_message_for_a_record_being_created_waits_instead_of_posting_again() -> None:
    world = World.build()
    ref = world.seller_deal()
    real_create = world.pc.create_referral
    raised: list[LinkBusyError] = []

    def second_message_meanwhile(body: object) -> object:
        try:
            world.engine.sync_crm_record(ref)  # another worker, while our POST is on its way
        except LinkBusyError as busy:
            raised.append(busy)
        return real_create(body)  # type: ignore[arg-type]

    world.pc.create_referral = second_message_meanwhile  # type: ignore[assignment,method-assign]
    world.engine.sync_crm_record(ref)
    assert len(world.pc.posts) == 1
    assert len(raised) == 1 and raised[0].retry_after_seconds > 0
    world.pc.create_referral = real_create  # type: ignore[method-assign]
    world.engine.sync_crm_record(ref)  # the delayed message, later: the link is there
    assert len(world.pc.posts) == 1


def test_a_create_whose_holder_died_is_looked_up_only_after_partner_center_can_have_committed_it() -> None:
    world = World.build()
    ref = world.seller_deal()
    real_create = world.pc.create_referral
    committed_later: list[object] = []

    def answer_lost(body: object) -> object:
        committed_later.append(body)  # Partner Center commits it some seconds after our timeout
        raise PartnerCenterUnavailableError("timed out", status=0)

    world.pc.create_referral = answer_lost  # type: ignore[assignment,method-assign]
    with pytest.raises(PartnerCenterUnavailableError):
        world.engine.sync_crm_record(ref)
    world.pc.create_referral = real_create  # type: ignore[method-assign]
    world.clock.advance(world.engine.settings.pc_http_timeout_seconds + 5)
    with pytest.raises(LinkBusyError):
        world.engine.sync_crm_record(ref)  # too early to tell: the POST may still land
    real_create(committed_later[0])  # type: ignore[arg-type]
    world.clock.advance(60)
    world.engine.sync_crm_record(ref)
    assert len(world.pc.posts) == 1
    link = world.links.get_link(link_id_for_crm("opportunity", ref.id))
    assert link is not None and link.state == "linked" and link.lease_owner is None


def test_a_stray_referral_found_only_by_external_reference_id_is_recorded_not_merged() -> None:
    world = World.build()
    referral_id, ref = _outgoing(world)
    before = world.crm.read(ref)
    stray = world.pc.add(
        incoming(
            status="Active",
            substatus="Accepted",
            direction="Outgoing",
            externalReferenceId=ref.id,
            details={**incoming()["details"], "dealValue": 1, "notes": "stray"},
        )
    )
    assert stray.id is not None and stray.id != referral_id
    world.engine.sync_referral(stray.id)
    after = world.crm.read(ref)
    assert (after.deal_value, after.notes) == (before.deal_value, before.notes)
    link = world.links.get_link(link_id_for_crm("opportunity", ref.id))
    assert link is not None and link.referral_id == referral_id
    assert any(stray.id in line and "stray" in line for line in world.links.audit_of(link.link_id))


def test_a_message_for_a_link_another_worker_is_syncing_waits_and_a_burst_collapses() -> None:
    world = World.build()
    referral_id, ref = _outgoing(world)
    world.crm.seller_edits(ref, RecordUpdate(notes="Seller notes 2"))
    busy: list[LinkBusyError] = []

    def webhook_and_poll_meanwhile(rid: str) -> None:  # two more messages while the first one patches
        messages: list[Callable[[], None]] = [
            lambda: world.engine.sync_referral(rid),
            lambda: world.engine.sync_crm_record(ref),
        ]
        for message in messages:
            try:
                message()
            except LinkBusyError as error:
                busy.append(error)

    world.pc.before_patch = webhook_and_poll_meanwhile
    world.engine.sync_crm_record(ref)
    # the webhook finds Partner Center as last synced and ends at once; the poll must wait
    assert len(busy) == 1 and busy[0].retry_after_seconds > 0
    assert len(world.pc.patches) == 1
    link = world.links.get_link(link_id_for_crm("opportunity", ref.id))
    assert link is not None and link.lease_owner is None  # released
    writes = len(world.crm.writes)
    world.clock.advance(5)
    world.engine.sync_referral(referral_id)  # the delayed messages, later: nothing left to do
    world.engine.sync_crm_record(ref)
    assert len(world.pc.patches) == 1 and len(world.crm.writes) == writes


def test_a_lease_whose_holder_died_expires() -> None:
    world = World.build()
    referral_id, ref = _outgoing(world)
    link = world.links.get_link(link_id_for_crm("opportunity", ref.id))
    assert link is not None
    until = world.clock() + dt.timedelta(minutes=2)
    world.links.save_link(link.model_copy(update={"lease_owner": "dead-worker", "lease_until": until}))
    world.pc.edit(referral_id, **{"details.notes": "PC notes"})
    with pytest.raises(LinkBusyError):
        world.engine.sync_referral(referral_id)
    world.clock.advance(121)
    world.engine.sync_referral(referral_id)
    assert world.crm.read(ref).notes == "PC notes"


def test_a_crm_create_retried_after_the_seller_accepted_does_not_revert_the_acceptance() -> None:
    world = World.build()  # a CRM with a pending stage
    referral = world.pc.add(incoming())
    assert referral.id is not None
    real_result = world.crm.set_sync_result
    calls = iter(range(100))

    def times_out_once(*args: Any, **kwargs: Any) -> None:
        if next(calls) == 0:
            raise CrmTransientError("the CRM timed out")
        real_result(*args, **kwargs)

    world.crm.set_sync_result = times_out_once  # type: ignore[method-assign]
    with pytest.raises(CrmTransientError):
        world.engine.sync_referral(referral.id)  # the record was created, then the attempt failed
    (record,) = world.crm.by_referral(referral.id)
    world.clock.advance(10)
    world.crm.seller_edits(record.ref, stage=StageFacts(stage_name="Develop"))  # the seller accepts
    world.clock.advance(10)
    world.engine.sync_referral(referral.id)  # the queue's retry
    assert world.crm.read(record.ref).stage.stage_name == "Develop"  # not back to pending
    stored = world.pc.referrals[referral.id]
    assert (stored["status"], stored["substatus"]) == ("Active", "Accepted")
    assert len(world.crm.by_referral(referral.id)) == 1


def test_a_second_message_for_a_referral_being_created_in_the_crm_waits_and_writes_no_second_contact_role() -> None:
    world = World.build()
    referral = world.pc.add(incoming())
    assert referral.id is not None
    referral_id = referral.id
    real_upsert = world.crm.upsert_by_referral_id
    busy: list[LinkBusyError] = []

    def second_message_meanwhile(*args: Any) -> Any:
        try:
            world.engine.sync_referral(referral_id)  # the webhook delivered twice, or reconcile
        except LinkBusyError as error:
            busy.append(error)
        return real_upsert(*args)

    world.crm.upsert_by_referral_id = second_message_meanwhile  # type: ignore[assignment,method-assign]
    world.engine.sync_referral(referral_id)
    assert len(busy) == 1
    assert [call for call, _, _ in world.crm.writes].count("set_contacts") == 1
    world.crm.upsert_by_referral_id = real_upsert  # type: ignore[method-assign]
    writes = len(world.crm.writes)
    world.engine.sync_referral(referral_id)  # the delayed message: nothing left to do
    assert len(world.crm.writes) == writes and len(world.crm.by_referral(referral_id)) == 1
