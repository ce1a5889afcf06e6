"""What Microsoft says, mirrored read-only on the CRM record: statusReason (why a referral was
declined or lost), expirationDateTime and inviteContext.notes (engine with the in-memory fakes)."""

from __future__ import annotations

import datetime as dt

from tests.fakes.world import World, incoming


def test_an_incoming_referral_shows_when_it_expires_and_microsofts_notes() -> None:
    world = World.build()
    document = incoming(expirationDateTime="2026-12-13T09:30:00.123Z")
    document["inviteContext"]["notes"] = "Customer wants a PoC before March"
    _, ref = world.referral_synced(document)
    connector = world.crm.read(ref).connector
    assert connector.expires_at == dt.datetime(2026, 12, 13, 9, 30, tzinfo=dt.UTC)
    assert connector.microsoft_notes == "Customer wants a PoC before March"


def test_microsofts_reason_for_a_loss_reaches_the_crm_record() -> None:
    world = World.build()
    referral_id, ref = world.referral_synced(incoming(status="Active", substatus="Accepted"))
    assert world.crm.read(ref).connector.status_reason is None
    world.pc_edits(referral_id, status="Closed", substatus="Lost", statusReason="Customer chose another vendor")
    record = world.crm.read(ref)
    assert record.connector.status_reason == "Customer chose another vendor"
    assert record.stage.is_closed and not record.stage.is_won


def test_the_mirrors_follow_partner_center_and_never_go_back() -> None:
    world = World.build()
    referral_id, ref = world.referral_synced(incoming(expirationDateTime="2026-12-13T09:30:00Z"))
    world.pc_edits(referral_id, **{"inviteContext.notes": "Updated by Microsoft"})
    assert world.crm.read(ref).connector.microsoft_notes == "Updated by Microsoft"
    patches = len(world.pc.patches)
    world.seller_edits(ref, microsoft_notes="A seller typed here", expires_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert len(world.pc.patches) == patches  # read-only mirrors: nothing goes to Partner Center
    world.pc_edits(referral_id, expirationDateTime="2026-12-20T09:30:00Z")
    connector = world.crm.read(ref).connector
    assert connector.expires_at == dt.datetime(2026, 12, 20, 9, 30, tzinfo=dt.UTC)
