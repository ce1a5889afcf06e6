"""The sync engine's decisions, end to end through its ports, against the in-memory fakes of
tests/fakes/ (milliseconds each). Test names carry the e2e scenario they mirror (tests/e2e/sync);
the e2e suite proves the same against the simulators over HTTP."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from shared.crm.port import CrmCapabilities, CrmContact, CrmRef, CrmSolution, RecordUpdate, StageFacts
from shared.partner_center.client import PartnerCenterUnavailableError
from shared.sync.engine import LinkBusyError, SyncRetryError
from shared.sync.state import link_id_for_crm, link_id_for_referral
from tests.fakes.world import DYNAMICS_LIKE, SALESFORCE_LIKE, World, incoming

BOTH_KINDS = pytest.mark.parametrize("capabilities", [SALESFORCE_LIKE, DYNAMICS_LIKE], ids=["pending-stage", "none"])

LEAD = {
    "type": "Independent",
    "qualification": "Direct",
    "inviteContext": {"invitedBy": {"organizationId": "msft"}},
}


@BOTH_KINDS
def test_01_a_new_cosell_referral_becomes_an_opportunity_with_every_mapped_field(
    capabilities: CrmCapabilities,
) -> None:
    world = World.build(capabilities)
    referral_id, ref = world.referral_synced()
    record = world.crm.read(ref)
    assert record.name == "Contoso migration"
    assert record.deal_value == Decimal(120000) and record.currency == "EUR"
    assert str(record.close_date) == "2027-03-31" and record.notes == "Needs a PoC"
    assert record.account is not None and record.account.name == "Contoso" and record.account.postal_code == "10115"
    assert [item.email for item in record.contacts] == ["ada@contoso.example"]
    assert [item.solution_id for item in record.solutions] == ["SOL-1"]
    assert record.connector.help_needed == "ProofOfConceptOrDemo" and record.connector.visible_to_microsoft
    assert record.connector.referral_status == "New / Pending"
    assert record.connector.sync_status == "Synced"
    assert record.stage.stage_name == (capabilities.pending_stage or "Develop")
    link = world.links.get_link(link_id_for_referral(referral_id))
    assert link is not None and link.state == "linked" and link.crm_id == ref.id
    assert world.pc.patches == []  # nothing goes back to Partner Center


def test_01_a_single_currency_crm_is_not_asked_for_a_currency() -> None:
    world = World.build(multi_currency=False)
    _, ref = world.referral_synced()
    assert world.crm.read(ref).currency is None
    world.seller_edits(ref, notes="Changed")
    assert world.pc.patches == []  # pending: waits, and never complains about the currency
    assert "currency" not in world.audit(ref)


def test_02_a_lead_sharing_referral_becomes_a_lead_without_a_name_where_leads_have_none() -> None:
    world = World.build(SALESFORCE_LIKE)
    _, ref = world.referral_synced(incoming(**LEAD))
    record = world.crm.read(ref)
    assert ref.kind == "lead"
    assert record.name == ""  # the lead's company is the customer
    assert record.account is not None and record.account.name == "Contoso"
    assert record.close_date is None


def test_02_with_cosell_only_a_lead_referral_is_skipped_and_the_audit_says_why() -> None:
    world = World.build(SYNC_COSELL_ONLY="true")
    referral = world.pc.add(incoming(**LEAD))
    assert referral.id is not None
    world.engine.sync_referral(referral.id)
    assert world.crm.records == {}
    assert "SYNC_COSELL_ONLY=true" in world.links.audit_of(link_id_for_referral(referral.id))[0]


def test_03_partner_center_updates_reach_the_crm_and_leave_crm_only_fields_alone() -> None:
    world = World.build()
    referral_id, ref = world.referral_synced()
    world.crm.seller_edits(ref, RecordUpdate(owner_id="005-other"))
    world.pc_edits(referral_id, **{"details.notes": "Bigger scope", "details.dealValue": 150000})
    record = world.crm.read(ref)
    assert record.notes == "Bigger scope" and record.deal_value == Decimal(150000)
    assert record.owner_id == "005-other"
    assert "Partner Center -> CRM: updated deal value, notes" in world.audit(ref)


def test_04_microsofts_crm_id_fills_the_microsoft_crm_identifier() -> None:
    world = World.build()
    referral_id, ref = world.referral_synced()
    engagement = world.pc.get_referral(referral_id).engagement_id
    microsoft = world.pc.add(
        {"organizationId": "msft", "engagementId": engagement, "trackingInfo": {"microsoftMsxId": "MSX-1"}}
    )
    assert microsoft.id is not None
    world.engine.sync_referral(microsoft.id)
    assert world.crm.read(ref).connector.microsoft_crm_id == "MSX-1"
    assert "updated Microsoft CRM id" in world.audit(ref)


@pytest.mark.parametrize(("substatus", "won"), [("Won", True), ("Lost", False)])
def test_05_partner_center_closing_the_referral_closes_the_crm_record(substatus: str, won: bool) -> None:
    world = World.build()
    referral_id, ref = world.referral_synced(incoming(status="Active", substatus="Accepted"))
    world.pc_edits(referral_id, status="Closed", substatus=substatus)
    stage = world.crm.read(ref).stage
    assert stage.is_closed and stage.is_won == won
    assert world.crm.read(ref).connector.referral_status == f"Closed / {substatus}"


def test_06_duplicate_deliveries_change_nothing() -> None:
    world = World.build()
    referral_id, ref = world.referral_synced()
    writes = len(world.crm.writes)
    for _ in range(3):
        world.engine.sync_referral(referral_id)
        world.engine.sync_crm_record(ref)
    assert len(world.crm.writes) == writes
    assert world.pc.patches == []


def test_07_a_seller_creates_a_cosell_opportunity_and_partner_center_gets_the_referral() -> None:
    world = World.build()
    ref = world.seller_deal()
    world.engine.sync_crm_record(ref)
    (posted,) = world.pc.posts
    assert posted["name"] == "Fabrikam rollout" and posted["externalReferenceId"] == ref.id
    assert posted["customerProfile"]["address"]["country"] == "NL"
    assert posted["details"]["dealValue"] == 91000.0 and posted["details"]["closingDateTime"].startswith("2027-05-31")
    assert posted["inviteContext"] == {"assistanceRequestCode": "ProofOfConceptOrDemo"}
    assert [item["email"] for item in posted["team"]] == ["sam@partner.example"]  # the record owner
    record = world.crm.read(ref)
    assert record.connector.referral_id is not None and record.connector.sync_status == "Synced"
    world.engine.sync_crm_record(ref)  # our own write coming back
    assert len(world.pc.posts) == 1 and world.pc.patches == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"solutions": []}, "add at least one Microsoft Partner Center solution"),
        ({"contacts": []}, "add a customer contact with an email address"),
        ({"deal_value": Decimal(0)}, "deal value must be greater than 0"),
    ],
)
def test_08_an_incomplete_cosell_is_not_sent_and_the_fix_syncs_it(overrides: dict[str, Any], message: str) -> None:
    world = World.build()
    ref = world.seller_deal(**overrides)
    world.engine.sync_crm_record(ref)
    record = world.crm.read(ref)
    assert record.connector.sync_status == "Error" and message in record.connector.audit
    assert world.pc.posts == []
    world.engine.sync_crm_record(ref)  # said once
    assert world.crm.read(ref).connector.audit.count(message) == 1

    world.crm.set_solutions(ref, [CrmSolution(solution_id="SOL-7")])
    world.crm.set_contacts(
        ref, [world.crm.find_or_create_contact(CrmContact(last_name="A", email="a@x.example"), None)]
    )
    world.seller_edits(ref, deal_value=Decimal(5000))
    assert len(world.pc.posts) == 1 and world.crm.read(ref).connector.sync_status == "Synced"


def _outgoing(world: World) -> tuple[str, CrmRef]:
    ref = world.seller_deal()
    world.engine.sync_crm_record(ref)
    referral_id = world.crm.read(ref).connector.referral_id
    assert referral_id is not None
    world.clock.advance(60)
    return referral_id, ref


def test_09_seller_edits_go_out_as_one_patch_with_only_the_changed_paths() -> None:
    world = World.build()
    referral_id, ref = _outgoing(world)
    world.seller_edits(ref, deal_value=Decimal(95000), close_date="2027-06-30")
    ((patched_id, operations),) = world.pc.patches
    assert patched_id == referral_id
    assert [item["path"] for item in operations] == ["/details/dealValue", "/details/closingDateTime"]
    assert "CRM -> Partner Center: updated deal value, close date" in world.audit(ref)


def test_09_a_field_partner_center_keeps_is_said_once_and_not_offered_again() -> None:
    world = World.build()
    referral_id, ref = _outgoing(world)
    original = world.pc.referrals[referral_id]["name"]
    world.seller_edits(ref, name="Renamed in the CRM", notes="Phase 2")
    ((_, operations),) = world.pc.patches
    assert [item["path"] for item in operations] == ["/details/notes"]  # no /name: not a patchable path
    assert world.pc.referrals[referral_id]["name"] == original
    assert world.audit(ref).count("Partner Center keeps its own name") == 1
    world.engine.sync_crm_record(ref)  # the next poll: nothing to offer, nothing said again
    world.seller_edits(ref, deal_value=Decimal(77000))
    assert [item["path"] for _, ops in world.pc.patches[1:] for item in ops] == ["/details/dealValue"]
    assert world.audit(ref).count("Partner Center keeps its own name") == 1
    assert world.crm.read(ref).name.startswith("Renamed in the CRM")


def test_10_solutions_added_and_removed_in_the_crm_follow_in_partner_center() -> None:
    world = World.build()
    referral_id, ref = _outgoing(world)
    world.crm.set_solutions(ref, [CrmSolution(solution_id="SOL-7"), CrmSolution(solution_id="SOL-8")])
    world.engine.sync_crm_record(ref)
    world.crm.set_solutions(ref, [CrmSolution(solution_id="SOL-8")])
    world.engine.sync_crm_record(ref)
    solutions = world.pc.referrals[referral_id]["details"]["requirements"]["solutions"]
    assert [item["id"] for item in solutions] == ["SOL-8"]
    assert len(world.pc.patches) == 2


@BOTH_KINDS
def test_11_edits_while_pending_wait_and_accepting_sends_them(capabilities: CrmCapabilities) -> None:
    world = World.build(capabilities)
    referral_id, ref = world.referral_synced()
    world.seller_edits(ref, notes="Seller plan")
    world.seller_edits(ref, notes="Seller plan")  # said once
    assert world.pc.patches == []
    assert world.audit(ref).count("edits to notes wait until the referral is accepted") == 1
    if capabilities.pending_stage:
        world.crm.seller_edits(ref, stage=StageFacts(stage_name="Develop"))
        world.engine.sync_crm_record(ref)
    else:
        world.seller_edits(ref, referral_response="Accept")
    stored = world.pc.referrals[referral_id]
    assert (stored["status"], stored["substatus"]) == ("Active", "Accepted")
    assert stored["details"]["notes"] == "Seller plan"
    assert world.crm.read(ref).connector.referral_status == "Active / Accepted"


def test_11_declining_a_pending_referral() -> None:
    world = World.build(DYNAMICS_LIKE)
    referral_id, ref = world.referral_synced()
    world.seller_edits(ref, referral_response="Decline", decline_reason="No capacity")
    stored = world.pc.referrals[referral_id]
    assert (stored["status"], stored["substatus"], stored["statusReason"]) == ("Closed", "Declined", "No capacity")


@pytest.mark.parametrize("won", [True, False])
def test_12_closing_in_the_crm_closes_the_referral_and_later_edits_stay_home(won: bool) -> None:
    world = World.build()
    referral_id, ref = _outgoing(world)
    world.seller_edits(ref, lifecycle="won" if won else "lost")
    assert world.pc.referrals[referral_id]["substatus"] == ("Won" if won else "Lost")
    patches = len(world.pc.patches)
    world.seller_edits(ref, notes="after closing")
    assert len(world.pc.patches) == patches
    assert "the referral is closed in Partner Center" in world.audit(ref)


def test_13_visibility_is_one_way() -> None:
    world = World.build()
    referral_id, ref = _outgoing(world)
    world.seller_edits(ref, visible_to_microsoft=False)
    assert world.pc.referrals[referral_id]["consent"]["consentToShareReferralWithMicrosoftSellers"] is True
    assert world.crm.read(ref).connector.visible_to_microsoft is True
    assert "cannot be turned off" in world.audit(ref)


def test_14_a_qualified_lead_accepts_the_referral_and_the_link_follows_the_opportunity() -> None:
    world = World.build(DYNAMICS_LIKE)
    referral_id, lead = world.referral_synced(incoming(**LEAD))
    opportunity = world.crm.seller_creates("opportunity", RecordUpdate(name="Converted"))
    world.crm.seller_edits(lead, stage=StageFacts(is_qualified=True, converted_opportunity_id=opportunity.id))
    world.engine.sync_crm_record(lead)
    assert world.pc.referrals[referral_id]["status"] == "Active"
    link = world.links.get_link(link_id_for_referral(referral_id))
    assert link is not None and (link.crm_object, link.crm_id) == ("opportunity", opportunity.id)
    moved = world.crm.read(opportunity)
    assert moved.connector.referral_id == referral_id and moved.connector.sync_enabled
    assert "now follows this opportunity" in moved.connector.audit


def test_14_a_disqualified_lead_declines_the_referral() -> None:
    world = World.build(DYNAMICS_LIKE)
    referral_id, lead = world.referral_synced(incoming(**LEAD))
    world.crm.seller_edits(lead, stage=StageFacts(is_disqualified=True))
    world.engine.sync_crm_record(lead)
    stored = world.pc.referrals[referral_id]
    assert (stored["substatus"], stored["statusReason"]) == ("Declined", "Disqualified in the CRM")


def test_16_different_fields_changed_on_both_sides_are_both_kept() -> None:
    world = World.build()
    referral_id, ref = _outgoing(world)
    world.pc.edit(referral_id, **{"details.notes": "PC notes"})
    world.crm.seller_edits(ref, RecordUpdate(deal_value=Decimal(99000)))
    world.engine.sync_crm_record(ref)
    assert world.crm.read(ref).notes == "PC notes"
    assert world.pc.referrals[referral_id]["details"]["dealValue"] == 99000.0


@pytest.mark.parametrize("later", ["pc", "crm"])
def test_16_the_same_field_changed_on_both_sides_goes_to_the_later_change(later: str) -> None:
    world = World.build()
    referral_id, ref = _outgoing(world)

    def pc_edit() -> None:
        world.pc.edit(referral_id, **{"details.notes": "PC notes"})

    def crm_edit() -> None:
        world.crm.seller_edits(ref, RecordUpdate(notes="CRM notes"))

    for edit in (pc_edit, crm_edit) if later == "crm" else (crm_edit, pc_edit):
        edit()
        world.clock.advance(5)
    world.engine.sync_crm_record(ref)
    expected = "CRM notes" if later == "crm" else "PC notes"
    assert world.crm.read(ref).notes == expected
    assert world.pc.referrals[referral_id]["details"]["notes"] == expected
    assert "conflict on notes" in world.audit(ref)


def test_17_a_create_whose_answer_is_lost_is_found_again_instead_of_posted_twice() -> None:
    world = World.build()
    ref = world.seller_deal()
    real_create = world.pc.create_referral

    def answer_lost(body: object) -> object:
        real_create(body)  # type: ignore[arg-type]
        raise PartnerCenterUnavailableError("timed out", status=0)

    world.pc.create_referral = answer_lost  # type: ignore[assignment,method-assign]
    with pytest.raises(PartnerCenterUnavailableError):
        world.engine.sync_crm_record(ref)
    world.pc.create_referral = real_create  # type: ignore[method-assign]
    with pytest.raises(LinkBusyError):
        world.engine.sync_crm_record(ref)  # the queue's retry, too early: the POST may still land
    world.clock.advance(world.engine.settings.pc_http_timeout_seconds + 11)
    world.engine.sync_crm_record(ref)  # once the intent's lease expired: looks, finds it
    assert len(world.pc.posts) == 1
    (referral,) = world.pc.referrals.values()
    assert world.crm.read(ref).connector.referral_id == referral["id"]


def test_18_a_stale_etag_is_merged_again_and_nothing_is_lost() -> None:
    world = World.build()
    referral_id, ref = _outgoing(world)

    def someone_else(rid: str) -> None:
        world.pc.edit(rid, **{"details.notes": "PC notes"})

    world.pc.before_patch = someone_else
    world.seller_edits(ref, deal_value=Decimal(99000))
    stored = world.pc.referrals[referral_id]
    assert stored["details"]["dealValue"] == 99000.0 and stored["details"]["notes"] == "PC notes"
    assert world.crm.read(ref).notes == "PC notes"


def test_a_link_saved_by_another_worker_meanwhile_is_merged_again() -> None:
    world = World.build()
    referral_id, ref = _outgoing(world)
    link_id = link_id_for_crm("opportunity", ref.id)

    def other_worker(_: object) -> None:
        current = world.links.get_link(link_id)
        assert current is not None
        world.links.save_link(current)

    def after_our_lease(_: object) -> None:  # a path that takes no lease (a create, an adoption)
        world.links.before_save = other_worker

    world.links.before_save = after_our_lease
    world.seller_edits(ref, notes="Seller notes 2")
    assert world.pc.referrals[referral_id]["details"]["notes"] == "Seller notes 2"


def test_a_link_that_keeps_losing_races_goes_back_to_the_queue() -> None:
    world = World.build()
    referral_id, ref = _outgoing(world)
    world.crm.seller_edits(ref, RecordUpdate(deal_value=Decimal(1234)))
    moves = iter(range(100))

    def always_changing(rid: str) -> None:
        world.pc.edit(rid, **{"details.notes": f"PC moved {next(moves)}"})
        world.pc.before_patch = always_changing

    world.pc.before_patch = always_changing
    with pytest.raises(SyncRetryError):
        world.engine.sync_crm_record(ref)
    assert world.pc.referrals[referral_id]["details"]["dealValue"] == 91000.0  # never written over


def test_a_crm_refusal_is_recorded_once_and_not_retried() -> None:
    world = World.build()
    referral_id, ref = world.referral_synced()
    world.crm.refuse_next("Deal value must be below 1M")
    world.pc_edits(referral_id, **{"details.dealValue": 5_000_000})
    record = world.crm.read(ref)
    assert record.connector.sync_status == "Error" and "Deal value must be below 1M" in record.connector.audit
    link = world.links.get_link(link_id_for_referral(referral_id))
    assert link is not None and link.status == "error"


def test_a_record_naming_a_referral_partner_center_does_not_have_is_refused_once() -> None:
    world = World.build()
    ref = world.seller_deal()
    world.crm.seller_edits(ref, RecordUpdate(referral_id="no-such-referral"))
    world.engine.sync_crm_record(ref)
    world.engine.sync_crm_record(ref)
    audit = world.audit(ref)
    assert audit.count("does not exist in Partner Center") == 1
    assert world.pc.posts == []


def test_a_deleted_referral_marks_the_link_in_error_once() -> None:
    world = World.build()
    referral_id, ref = world.referral_synced()
    del world.pc.referrals[referral_id]
    world.seller_edits(ref, notes="x")
    world.seller_edits(ref, notes="y")
    assert world.audit(ref).count("no longer exists in Partner Center") == 1
    link = world.links.get_link(link_id_for_referral(referral_id))
    assert link is not None and link.state == "error"
