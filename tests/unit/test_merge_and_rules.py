"""The per-field three-way merge and the status rules: pure, table-driven."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from shared.mapping import rules, status
from shared.mapping.status import ACCEPT, StatusChange
from shared.sync.merge import FieldMerge, merge_fields

EARLY = dt.datetime(2026, 5, 1, 9, 0, tzinfo=dt.UTC)
LATE = EARLY + dt.timedelta(minutes=5)


def merge(
    pc: dict[str, Any], crm: dict[str, Any], base_pc: dict[str, Any], base_crm: dict[str, Any], **times: Any
) -> FieldMerge:
    return merge_fields(
        pc,
        crm,
        base_pc,
        base_crm,
        pc_modified_at=times.get("pc_modified_at", EARLY),
        crm_modified_at=times.get("crm_modified_at", EARLY),
    )


def test_nothing_changed_means_nothing_to_write_even_when_the_sides_store_it_differently() -> None:
    base_pc = {"name": "Deal", "customer": {"name": "Contoso", "street": None}}
    base_crm = {"name": "Deal", "customer": {"name": "Contoso", "street": "1 Main St"}}
    result = merge(dict(base_pc), dict(base_crm), base_pc, base_crm)
    assert (result.to_pc, result.to_crm, result.conflicts) == ({}, {}, [])


def test_a_change_on_one_side_goes_to_the_other() -> None:
    base = {"deal_value": "100", "notes": "a"}
    result = merge({"deal_value": "150", "notes": "a"}, {"deal_value": "100", "notes": "b"}, base, base)
    assert result.to_crm == {"deal_value": "150"}
    assert result.to_pc == {"notes": "b"}
    assert result.conflicts == []


def test_both_changed_the_same_field_the_later_change_wins_and_is_reported() -> None:
    base = {"deal_value": "100"}
    crm_later = merge({"deal_value": "150"}, {"deal_value": "175"}, base, base, crm_modified_at=LATE)
    assert crm_later.to_pc == {"deal_value": "175"} and crm_later.to_crm == {}
    assert [(c.field, c.winner) for c in crm_later.conflicts] == [("deal_value", "crm")]
    assert "Partner Center '150' vs CRM '175'" in crm_later.conflicts[0].describe()

    pc_later = merge({"deal_value": "150"}, {"deal_value": "175"}, base, base, pc_modified_at=LATE)
    assert pc_later.to_crm == {"deal_value": "150"} and pc_later.to_pc == {}


def test_a_tie_goes_to_partner_center() -> None:
    base = {"name": "Old"}
    result = merge({"name": "PC"}, {"name": "CRM"}, base, base, pc_modified_at=EARLY, crm_modified_at=EARLY)
    assert result.to_crm == {"name": "PC"}
    assert result.conflicts[0].winner == "pc"


def test_both_changed_to_the_same_value_is_no_conflict() -> None:
    base = {"close_date": "2027-01-01"}
    result = merge({"close_date": "2027-02-01"}, {"close_date": "2027-02-01"}, base, base)
    assert (result.to_pc, result.to_crm, result.conflicts) == ({}, {}, [])


def test_solutions_and_contacts_compare_by_identity_not_by_spelling() -> None:
    base_pc = {"solutions": [{"id": "SOL-1", "name": "A"}]}
    base_crm = {"solutions": [{"id": "SOL-1", "name": "A"}]}
    pc = {"solutions": [{"id": "SOL-1", "name": "A (renamed by Microsoft)"}]}
    assert merge(pc, dict(base_crm), base_pc, base_crm).to_crm == {}
    added = {"solutions": [{"id": "SOL-1", "name": "A"}, {"id": "SOL-2", "name": "B"}]}
    assert merge(dict(base_pc), added, base_pc, base_crm).to_pc == added


def test_a_side_without_the_field_never_receives_it() -> None:
    """A single-currency Salesforce org has no currency field: Partner Center's currency change is not written."""
    result = merge({"currency": "EUR"}, {}, {"currency": "USD"}, {})
    assert result.to_crm == {}


def test_visibility_cannot_be_revoked_and_the_crm_is_put_back() -> None:
    base = {"visible": True}
    result = merge({"visible": True}, {"visible": False}, base, base)
    assert result.to_pc == {}
    assert result.to_crm == {"visible": True}
    assert "cannot be turned off" in result.notes[0]


def test_turning_visibility_on_is_sent() -> None:
    base = {"visible": False}
    assert merge({"visible": False}, {"visible": True}, base, base).to_pc == {"visible": True}


def test_the_partner_team_only_flows_from_the_crm_owner() -> None:
    base_pc = {"team": [{"email": "a@x.example"}]}
    base_crm = {"team": [{"email": "a@x.example"}]}
    pc_changed = merge({"team": [{"email": "m@microsoft.example"}]}, dict(base_crm), base_pc, base_crm)
    assert pc_changed.to_crm == {}
    crm_changed = merge(dict(base_pc), {"team": [{"email": "b@x.example"}]}, base_pc, base_crm)
    assert crm_changed.to_pc == {"team": [{"email": "b@x.example"}]}


# ---- status rules ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pc_state", "crm", "base_crm", "expected"),
    [
        ("pending", {"lifecycle": "pending"}, {"lifecycle": "pending"}, None),
        ("pending", {"lifecycle": "active"}, {"lifecycle": "pending"}, ACCEPT),  # Salesforce stage moved on
        ("pending", {"lifecycle": "active"}, {"lifecycle": "active"}, None),  # Dynamics: open says nothing
        ("pending", {"lifecycle": "active", "response": "Accept"}, {"lifecycle": "active"}, ACCEPT),
        (
            "pending",
            {"lifecycle": "active", "response": "Decline", "decline_reason": "No capacity"},
            {"lifecycle": "active"},
            StatusChange(status="Closed", substatus="Declined", reason="No capacity"),
        ),
        (
            "pending",
            {"lifecycle": "lost"},
            {"lifecycle": "pending"},
            StatusChange(status="Closed", substatus="Declined", reason="Closed as lost in the CRM"),
        ),
        ("pending", {"lifecycle": "qualified"}, {"lifecycle": "active"}, ACCEPT),
        (
            "pending",
            {"lifecycle": "disqualified"},
            {"lifecycle": "active"},
            StatusChange(status="Closed", substatus="Declined", reason="Disqualified in the CRM"),
        ),
        ("active", {"lifecycle": "won"}, {"lifecycle": "active"}, StatusChange(status="Closed", substatus="Won")),
        ("active", {"lifecycle": "lost"}, {"lifecycle": "active"}, StatusChange(status="Closed", substatus="Lost")),
        ("active", {"lifecycle": "active"}, {"lifecycle": "active"}, None),
        ("won", {"lifecycle": "active"}, {"lifecycle": "won"}, None),  # closed referrals are terminal
    ],
)
def test_partner_center_status_change(
    pc_state: str, crm: dict[str, Any], base_crm: dict[str, Any], expected: StatusChange | None
) -> None:
    change, _ = status.partner_center_status_change({"lifecycle": pc_state}, crm, base_crm)
    assert change == expected


def test_declining_an_accepted_referral_is_explained_not_sent() -> None:
    change, note = status.partner_center_status_change(
        {"lifecycle": "active"}, {"lifecycle": "active", "response": "Decline"}, {"lifecycle": "active"}
    )
    assert change is None
    assert note is not None and "close the opportunity as lost" in note


@pytest.mark.parametrize(
    ("pc_state", "crm_state", "crm_object", "pending_stage", "expected"),
    [
        ("won", "active", "opportunity", True, "won"),
        ("lost", "active", "opportunity", True, "lost"),
        ("declined", "pending", "opportunity", True, "lost"),
        ("expired", "active", "opportunity", False, "lost"),
        ("won", "won", "opportunity", True, None),
        ("won", "active", "lead", True, None),  # converting a lead is the seller's decision
        ("declined", "active", "lead", True, "lost"),
        ("active", "pending", "opportunity", True, "active"),
        ("active", "active", "opportunity", False, None),
        ("pending", "pending", "opportunity", True, None),
    ],
)
def test_crm_lifecycle_for_partner_center_status(
    pc_state: str, crm_state: str, crm_object: Any, pending_stage: bool, expected: str | None
) -> None:
    assert (
        status.crm_lifecycle_for(
            {"lifecycle": pc_state}, {"lifecycle": crm_state}, crm_object=crm_object, has_pending_stage=pending_stage
        )
        == expected
    )


# ---- validation ------------------------------------------------------------------------------------
def co_sell(**overrides: Any) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": "Deal",
        "customer": {"name": "Contoso", "country": "DE"},
        "help_needed": "ProofOfConceptOrDemo",
        "contacts": [{"email": "ada@contoso.example", "last_name": "Lovelace"}],
        "solutions": [{"id": "SOL-1"}],
        "deal_value": "1000",
        "currency": "EUR",
        "close_date": "2027-01-31",
    }
    view.update(overrides)
    return view


def test_a_complete_co_sell_has_no_problems() -> None:
    assert rules.partner_center_problems(co_sell(), accept_country_names=False) == []


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"solutions": []}, "add at least one Microsoft Partner Center solution"),
        ({"contacts": []}, "add a customer contact with an email address"),
        ({"contacts": [{"last_name": "NoMail", "email": None}]}, "add a customer contact with an email address"),
        ({"deal_value": "0"}, "deal value must be greater than 0"),
        ({"deal_value": None}, "enter a deal value greater than 0"),
        ({"currency": None}, "choose the deal currency"),
        ({"close_date": None}, "set the close date"),
        ({"help_needed": "PleaseHelp"}, "'PleaseHelp' is not a valid 'How can Microsoft help?' value"),
        (
            {"customer": {"name": "Contoso", "country": "Germany"}},
            "customer country 'Germany' is not a two-letter ISO 3166 code (use DE)",
        ),
        ({"customer": None}, "choose the customer account"),
    ],
)
def test_each_missing_co_sell_requirement_is_named(overrides: dict[str, Any], problem: str) -> None:
    problems = rules.partner_center_problems(co_sell(**overrides), accept_country_names=False)
    assert any(problem in text for text in problems), problems


def test_country_names_are_accepted_when_the_setting_allows_them() -> None:
    view = co_sell(customer={"name": "Contoso", "country": "Germany"})
    assert rules.partner_center_problems(view, accept_country_names=True) == []


def test_a_deal_without_help_needs_only_a_name_and_a_customer_country() -> None:
    private = {"name": "Private deal", "customer": {"name": "Contoso", "country": "US"}, "help_needed": None}
    assert rules.partner_center_problems(private, accept_country_names=False) == []
    assert rules.partner_center_problems({**private, "customer": {"name": "Contoso"}}, accept_country_names=False) == [
        "customer country is missing"
    ]


def test_a_single_currency_org_has_no_currency_opinion_and_is_not_blamed_for_it() -> None:
    view = co_sell()
    del view["currency"]
    assert rules.partner_center_problems(view, accept_country_names=False) == []
