"""The planner's decision for each e2e scenario (tests/e2e/sync), as a table: no I/O, microseconds.

Each row gives what the link's snapshot said, what each side says now and a few facts, and the
decision expected: what is patched in Partner Center, what is written to the CRM, what the record
and the audit say. `plan` assumes Partner Center takes the patch as sent."""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared.mapping.status import ACCEPT, WIN, StatusChange
from shared.sync.plan import Facts, SyncPlan, plan

T0 = dt.datetime(2026, 5, 1, 9, 0, tzinfo=dt.UTC)

TWO_WAY: dict[str, Any] = {
    "name": "Contoso migration",
    "deal_value": "120000",
    "currency": "EUR",
    "close_date": "2027-03-31",
    "notes": "Needs a PoC",
    "customer": {
        "name": "Contoso",
        "street": None,
        "city": "Berlin",
        "state": None,
        "postal_code": "10115",
        "country": "DE",
    },
    "contacts": [
        {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@contoso.example", "phone": None, "title": None}
    ],
    "solutions": [{"id": "SOL-1", "name": "One", "publisher": None, "type": None}],
    "help_needed": "ProofOfConceptOrDemo",
    "visible": True,
    "team": [
        {"first_name": "Sam", "last_name": "Seller", "email": "sam@partner.example", "phone": None, "title": None}
    ],
}
PC: dict[str, Any] = {**TWO_WAY, "lifecycle": "active", "status_mirror": "Active / Accepted", "engagement_id": "e-1"}
CRM: dict[str, Any] = {
    **TWO_WAY,
    "lifecycle": "active",
    "response": None,
    "decline_reason": None,
    "status_mirror": "Active / Accepted",
    "engagement_id": "e-1",
    "referral_link": "https://partner.microsoft.com/r-1",
    "microsoft_crm_id": None,
}
PENDING_PC = {**PC, "lifecycle": "pending", "status_mirror": "New / Pending"}
PENDING_CRM = {**CRM, "status_mirror": "New / Pending"}


@dataclass
class Case:
    pc: dict[str, Any] = field(default_factory=dict)
    """Changes to what Partner Center says now (over the last sync)."""
    crm: dict[str, Any] = field(default_factory=dict)
    base_pc: dict[str, Any] = field(default_factory=lambda: PC)
    base_crm: dict[str, Any] = field(default_factory=lambda: CRM)
    held: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    # expected
    to_pc: dict[str, Any] = field(default_factory=dict)
    status: StatusChange | None = None
    to_crm: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)
    result: str | None = None
    says: tuple[str, ...] = ()
    error: str | None = None
    follow: str | None = None


def run(case: Case) -> SyncPlan:
    facts = Facts(
        **{
            "crm_object": "opportunity",
            "pc_modified_at": T0,
            "crm_modified_at": T0,
            "referral_link": CRM["referral_link"],
            "has_pending_stage": True,
            **case.facts,
        }
    )
    snapshot = {"pc": case.base_pc, "crm": case.base_crm, **({"held": case.held} if case.held else {})}
    return plan(copy.deepcopy(snapshot), {**case.base_pc, **case.pc}, {**case.base_crm, **case.crm}, facts)


CASES: dict[str, Case] = {
    "03 a Partner Center edit reaches the CRM": Case(
        pc={"notes": "Bigger scope", "deal_value": "150000"},
        to_crm={"deal_value": "150000", "notes": "Bigger scope"},
        result="Synced",
        says=("Partner Center -> CRM: updated deal value, notes",),
    ),
    "04 Microsoft's CRM id fills the CRM field": Case(
        pc={"microsoft_crm_id": "MSX-1"},
        columns={"microsoft_crm_id": "MSX-1"},
        result="Synced",
        says=("Partner Center -> CRM: updated Microsoft CRM id",),
    ),
    "05 Partner Center won closes the opportunity won": Case(
        pc={"lifecycle": "won", "status_mirror": "Closed / Won"},
        columns={"lifecycle": "won", "referral_status": "Closed / Won"},
        result="Synced",
        says=("Partner Center -> CRM: updated status",),
    ),
    "05 Partner Center lost closes it lost": Case(
        pc={"lifecycle": "lost", "status_mirror": "Closed / Lost"},
        columns={"lifecycle": "lost", "referral_status": "Closed / Lost"},
        result="Synced",
    ),
    "05 a won referral never converts a lead": Case(
        pc={"lifecycle": "won", "status_mirror": "Closed / Won"},
        facts={"crm_object": "lead"},
        columns={"referral_status": "Closed / Won"},
        result="Synced",
    ),
    "05 a referral closed long ago does not re-close a reopened record": Case(
        base_pc={**PC, "lifecycle": "lost", "status_mirror": "Closed / Lost"},
        base_crm={**CRM, "status_mirror": "Closed / Lost"},
    ),
    "06 a duplicate delivery changes nothing": Case(),
    "06 an old snapshot's 'open' is today's 'active'": Case(base_crm={**CRM, "lifecycle": "open"}),
    "09 seller edits go out as one patch": Case(
        crm={"deal_value": "95000", "close_date": "2027-06-30"},
        to_pc={"deal_value": "95000", "close_date": "2027-06-30"},
        result="Synced",
        says=("CRM -> Partner Center: updated deal value, close date",),
    ),
    "10 a removed solution follows": Case(
        crm={"solutions": [{"id": "SOL-2", "name": None, "publisher": None, "type": None}]},
        to_pc={"solutions": [{"id": "SOL-2", "name": None, "publisher": None, "type": None}]},
        result="Synced",
        says=("CRM -> Partner Center: updated solutions",),
    ),
    "08 an edit that makes a co-sell incomplete is not sent": Case(
        crm={"solutions": []},
        result="Error",
        error="Not sent to Partner Center: add at least one Microsoft Partner Center solution",
    ),
    "08 ... and said once": Case(
        crm={"solutions": []},
        facts={"last_error": "Not sent to Partner Center: add at least one Microsoft Partner Center solution"},
        error="Not sent to Partner Center: add at least one Microsoft Partner Center solution",
    ),
    "08 a single-currency CRM is not asked for a currency": Case(
        base_crm={key: value for key, value in CRM.items() if key != "currency"},
        crm={"notes": "Seller notes"},
        to_pc={"notes": "Seller notes"},
        result="Synced",
    ),
    "11 edits while pending wait": Case(
        base_pc=PENDING_PC,
        base_crm=PENDING_CRM,
        crm={"notes": "Seller plan"},
        result="Synced",
        says=("edits to notes wait until the referral is accepted (it is pending in Partner Center)",),
    ),
    "11 ... and are said to wait once": Case(
        base_pc=PENDING_PC,
        base_crm=PENDING_CRM,
        crm={"notes": "Seller plan"},
        held={"notes": "Seller plan"},
    ),
    "11 accepting (response) sends them": Case(
        base_pc=PENDING_PC,
        base_crm=PENDING_CRM,
        crm={"notes": "Seller plan", "response": "Accept"},
        held={"notes": "Seller plan"},
        to_pc={"notes": "Seller plan"},
        status=ACCEPT,
        columns={"referral_status": "Active / Accepted"},
        result="Synced",
        says=("CRM -> Partner Center: updated notes, status (Active / Accepted)",),
    ),
    "11 accepting (leaving the pending stage) moves nothing back": Case(
        base_pc=PENDING_PC,
        base_crm={**PENDING_CRM, "lifecycle": "pending"},
        crm={"lifecycle": "active"},
        status=ACCEPT,
        columns={"referral_status": "Active / Accepted"},
        result="Synced",
    ),
    "11 Partner Center's accept moves the record out of the pending stage": Case(
        base_pc=PENDING_PC,
        base_crm={**PENDING_CRM, "lifecycle": "pending"},
        pc={"lifecycle": "active", "status_mirror": "Active / Accepted"},
        columns={"lifecycle": "active", "referral_status": "Active / Accepted"},
        result="Synced",
        says=("Partner Center -> CRM: updated status",),
    ),
    "11 declining a pending referral": Case(
        base_pc=PENDING_PC,
        base_crm=PENDING_CRM,
        crm={"response": "Decline", "decline_reason": "No capacity"},
        status=StatusChange(status="Closed", substatus="Declined", reason="No capacity"),
        columns={"referral_status": "Closed / Declined", "lifecycle": "lost"},  # the record closes lost
        result="Synced",
    ),
    "11 an accepted referral cannot be declined": Case(
        crm={"response": "Decline"},
        result="Synced",
        says=("the referral is already accepted, so it cannot be declined; close the opportunity as lost instead",),
    ),
    "12 closing won in the CRM closes the referral": Case(
        crm={"lifecycle": "won"},
        status=WIN,
        columns={"referral_status": "Closed / Won"},
        result="Synced",
        says=("CRM -> Partner Center: updated status (Closed / Won)",),
    ),
    "12 closing lost in the CRM closes the referral lost": Case(
        crm={"lifecycle": "lost", "decline_reason": "Budget"},
        status=StatusChange(status="Closed", substatus="Lost", reason="Budget"),
        columns={"referral_status": "Closed / Lost"},
        result="Synced",
    ),
    "12 later edits stay home": Case(
        base_pc={**PC, "lifecycle": "won", "status_mirror": "Closed / Won"},
        base_crm={**CRM, "lifecycle": "won", "status_mirror": "Closed / Won"},
        crm={"notes": "after closing"},
        facts={"pc_substatus": "Won"},
        result="Synced",
        says=("the referral is closed in Partner Center (Won); CRM changes are not sent",),
    ),
    "13 visibility is one way": Case(
        crm={"visible": False},
        to_crm={"visible": True},
        result="Synced",
        says=(
            "Partner Center -> CRM: updated visibility",
            "visibility to Microsoft sellers cannot be turned off once the referral is shared; kept visible",
        ),
    ),
    "14 a qualified lead accepts and the link follows the opportunity": Case(
        base_pc=PENDING_PC,
        base_crm=PENDING_CRM,
        crm={"lifecycle": "qualified"},
        facts={"crm_object": "lead", "converted_opportunity_id": "006-B"},
        status=ACCEPT,
        follow="006-B",
    ),
    "14 a disqualified lead declines the referral": Case(
        base_pc=PENDING_PC,
        base_crm=PENDING_CRM,
        crm={"lifecycle": "disqualified"},
        facts={"crm_object": "lead"},
        status=StatusChange(status="Closed", substatus="Declined", reason="Disqualified in the CRM"),
        columns={"referral_status": "Closed / Declined"},  # already disqualified
        result="Synced",
    ),
    "16 different fields changed on both sides are both kept": Case(
        pc={"notes": "PC notes"},
        crm={"deal_value": "99000"},
        to_pc={"deal_value": "99000"},
        to_crm={"notes": "PC notes"},
        result="Synced",
        says=("CRM -> Partner Center: updated deal value", "Partner Center -> CRM: updated notes"),
    ),
    "16 the same field: the later change (CRM) wins": Case(
        pc={"notes": "PC notes"},
        crm={"notes": "CRM notes"},
        facts={"crm_modified_at": T0 + dt.timedelta(seconds=5)},
        to_pc={"notes": "CRM notes"},
        result="Synced",
    ),
    "16 the same field: a tie goes to Partner Center": Case(
        pc={"notes": "PC notes"},
        crm={"notes": "CRM notes"},
        to_crm={"notes": "PC notes"},
        result="Synced",
    ),
    "the owner is the partner team, never written to the CRM": Case(
        pc={"team": []},
    ),
    "a record back from Error is marked Synced": Case(facts={"crm_sync_status": "Error"}, result="Synced"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_plan_of_each_scenario(name: str) -> None:
    case = CASES[name]
    decided = run(case)
    assert decided.partner_center.to_pc == case.to_pc
    assert decided.partner_center.status == case.status
    assert decided.partner_center.error == case.error
    assert decided.crm.follow_opportunity == case.follow
    if case.follow is None:
        assert decided.crm.changes == case.to_crm
        assert decided.crm.columns == case.columns
        assert decided.outcome.sync_result == case.result
    for words in case.says:
        assert words in decided.outcome.parts


def test_a_conflict_is_named_in_the_audit_with_both_values() -> None:
    decided = run(CASES["16 the same field: a tie goes to Partner Center"])
    assert decided.outcome.audit_outcome == "conflict"
    assert "conflict on notes: Partner Center 'PC notes' vs CRM 'CRM notes'; kept the Partner Center value" in (
        decided.outcome.line
    )


def test_unsent_edits_keep_their_merge_base_so_they_go_later() -> None:
    decided = run(CASES["11 edits while pending wait"])
    assert decided.snapshot["crm"]["notes"] == "Needs a PoC"  # the old base: still a change next time
    assert decided.snapshot["held"] == {"notes": "Seller plan"}


def test_after_a_sync_the_snapshot_is_both_sides_as_written() -> None:
    decided = run(CASES["16 different fields changed on both sides are both kept"])
    assert decided.snapshot["pc"]["deal_value"] == "99000" and decided.snapshot["crm"]["notes"] == "PC notes"
    assert decided.outcome.audit_direction == "both"
