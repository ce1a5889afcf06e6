"""Scenarios 7-10, 13 and 19 of issue 6: CRM -> Partner Center, for Salesforce and Dynamics 365."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from shared.partner_center.contract import contract
from tests.e2e.sync.conftest import SyncSystem
from tests.e2e.sync.drivers import Account, Contact, Solution, tag

pytestmark = [pytest.mark.azurite, pytest.mark.sandbox, pytest.mark.e2e]

REFERRAL_LINK = "https://partner.microsoft.com/dashboard/referrals/v2/opportunities/{id}"
SELLER_EMAILS = {"sally.seller@sandbox.example", "dana.seller@sandbox.example"}  # Salesforce, Dataverse sellers


@dataclass
class Deal:
    """What a seller types into a new opportunity."""

    name: str
    country: str | None = "NL"
    with_contact: bool = True
    contact_email: str | None = "set"
    solutions: list[Solution] = field(default_factory=list)
    deal_value: Decimal | None = Decimal(91000)
    currency: str | None = "EUR"
    close_date: dt.date | None = dt.date(2027, 5, 31)
    notes: str | None = "Lakehouse on Azure; PoC in January."
    help_needed: str | None = "ProofOfConceptOrDemo"
    visible: bool = True


def cosell_deal(**overrides: Any) -> Deal:
    token = tag()
    deal = Deal(name=f"Tailspin {token} - data platform", solutions=[Solution(f"SOL-{token}", "Lakehouse Accelerator")])
    for name, value in overrides.items():
        setattr(deal, name, value)
    return deal


@dataclass
class Created:
    opportunity_id: str
    account_id: str
    account: Account
    contact_email: str | None


def create(sync: SyncSystem, deal: Deal, *, sync_on: bool = True) -> Created:
    token = tag()
    account = Account(name=f"Tailspin Toys {token} B.V.", postal_code=f"35{token[:2]} AB", country=deal.country)
    account_id = sync.seller.create_account(account)
    contacts: list[str] = []
    email = None
    if deal.with_contact:
        email = f"sanne.{token}@tailspin.example" if deal.contact_email == "set" else deal.contact_email
        contacts.append(sync.seller.create_contact(Contact("Sanne", f"de Vries {token}", email), account_id))
    opportunity_id = sync.seller.create_opportunity(
        deal.name,
        account_id=account_id,
        contact_ids=contacts,
        solutions=deal.solutions,
        deal_value=deal.deal_value,
        currency=deal.currency,
        close_date=deal.close_date,
        notes=deal.notes,
        help_needed=deal.help_needed,
        visible=deal.visible,
        sync=sync_on,
    )
    return Created(opportunity_id, account_id, account, email)


def pc_posts(sync: SyncSystem, since: int) -> int:
    entries = sync.pc_control.requests()[since:]
    return sum(1 for e in entries if e["method"] == "POST" and e["route"] == "/v1.0/engagements/referrals")


def wait_created(sync: SyncSystem, opportunity_id: str) -> dict[str, Any]:
    raw = sync.wait_for_raw(
        "opportunity", opportunity_id, lambda r: r.referral_id and r.sync_status == "Synced", "the referral id back"
    )
    return sync.partner_center.referral(str(raw.referral_id))


def test_07_a_seller_creates_a_cosell_opportunity_and_partner_center_gets_the_referral(sync: SyncSystem) -> None:
    sync.begin("07 seller creates a co-sell opportunity with Sync = Yes")
    start = len(sync.pc_control.requests())
    deal = cosell_deal()
    created = create(sync, deal)

    referral = wait_created(sync, created.opportunity_id)
    raw = sync.seller.raw("opportunity", created.opportunity_id)
    assert raw.name == deal.name + " ✔"
    assert raw.referral_link == REFERRAL_LINK.format(id=referral["id"])
    assert raw.engagement_id == referral["engagementId"]
    assert raw.referral_status == f"{referral['status']} / {referral['substatus']}"
    assert f"created Partner Center referral {referral['id']}" in raw.audit

    assert (referral["direction"], referral["type"]) == ("Outgoing", "Shared")
    assert referral["name"] == deal.name  # never the sync mark (scenario 19)
    assert referral["externalReferenceId"] == created.opportunity_id
    assert referral["inviteContext"]["assistanceRequestCode"] == "ProofOfConceptOrDemo"
    assert referral["consent"]["consentToShareReferralWithMicrosoftSellers"] is True
    profile = referral["customerProfile"]
    assert profile["name"] == created.account.name
    assert profile["address"]["postalCode"] == created.account.postal_code
    assert profile["address"]["country"] == "NL"
    assert [member["email"] for member in profile["team"]] == [created.contact_email]
    assert {member.get("email") for member in referral["team"]} & SELLER_EMAILS  # the record owner
    assert [item["id"] for item in referral["details"]["requirements"]["solutions"]] == [deal.solutions[0].solution_id]
    assert Decimal(str(referral["details"]["dealValue"])) == Decimal(91000)
    assert referral["details"]["closingDateTime"].startswith("2027-05-31")
    assert referral["details"]["notes"] == deal.notes
    if not (sync.crm == "salesforce" and sync.settings.deal_currency_field == "CurrencyIsoCode"):
        assert referral["details"]["currency"] == "EUR"
    assert pc_posts(sync, start) == 1
    assert len(sync.partner_center.referrals_by_external_id(created.opportunity_id)) == 1
    sync.assert_quiet()


PROBLEMS = {
    "no solution": (
        {"solutions": []},
        "add at least one Microsoft Partner Center solution",
    ),
    "country name": (
        {"country": "Germany"},
        "customer country 'Germany' is not a two-letter ISO 3166 code (use DE)",
    ),
    "no contact": (
        {"with_contact": False},
        "add a customer contact with an email address (Microsoft needs one when you ask for help)",
    ),
    "value 0": (
        {"deal_value": Decimal(0)},
        "deal value must be greater than 0",
    ),
}


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_08_an_incomplete_cosell_is_not_sent_and_the_fix_syncs_it(sync: SyncSystem, problem: str) -> None:
    sync.begin(f"08 incomplete co-sell: {problem}")
    overrides, message = PROBLEMS[problem]
    assert isinstance(overrides, dict) and isinstance(message, str)
    start = len(sync.pc_control.requests())
    deal = cosell_deal(**overrides)
    created = create(sync, deal)

    raw = sync.wait_for_raw("opportunity", created.opportunity_id, lambda r: r.sync_status == "Error", "status Error")
    assert raw.name == deal.name + " ✖"
    assert "Not sent to Partner Center: " in raw.audit
    assert message in raw.audit
    assert raw.referral_id is None
    assert pc_posts(sync, start) == 0
    assert sync.partner_center.referrals_by_external_id(created.opportunity_id) == []

    if problem == "no solution":
        sync.seller.add_solution("opportunity", created.opportunity_id, Solution(f"SOL-{tag()}", "Fixed"))
    elif problem == "country name":
        sync.seller.set_account_country(created.account_id, "DE")
    elif problem == "no contact":
        contact = sync.seller.create_contact(Contact("Kim", "Akers", f"kim.{tag()}@x.example"), created.account_id)
        sync.seller.add_contact(created.opportunity_id, contact)
    else:
        sync.seller.update("opportunity", created.opportunity_id, deal_value=Decimal(5000))
    referral = wait_created(sync, created.opportunity_id)
    assert sync.seller.raw("opportunity", created.opportunity_id).name == deal.name + " ✔"
    assert referral["name"] == deal.name  # scenario 19: neither mark reaches Partner Center
    assert pc_posts(sync, start) == 1
    sync.assert_quiet()


def _patches(sync: SyncSystem, referral_id: str) -> list[dict[str, Any]]:
    return [item for item in sync.pc_control.state()["patches"] if item["referral_id"] == referral_id]


def test_09_seller_edits_go_out_as_one_patch_on_documented_paths_only(sync: SyncSystem) -> None:
    sync.begin("09 seller edits value, date, name, notes")
    deal = cosell_deal()
    created = create(sync, deal)
    referral = wait_created(sync, created.opportunity_id)
    sync.idle()
    before = len(_patches(sync, referral["id"]))
    etag = sync.partner_center.referral(referral["id"])["eTag"]

    new_name = deal.name + " (phase 2)"
    sync.seller.update(
        "opportunity",
        created.opportunity_id,
        name=new_name + " ✔",  # the seller keeps the mark while renaming; it must not travel
        deal_value=Decimal(120000),
        close_date=dt.date(2027, 9, 30),
        notes="Phase 2 adds streaming.",
    )
    updated = sync.wait_for_referral(
        referral["id"], lambda r: r["details"]["notes"] == "Phase 2 adds streaming.", "the new notes in PC"
    )
    assert Decimal(str(updated["details"]["dealValue"])) == Decimal(120000)
    assert updated["details"]["closingDateTime"].startswith("2027-09-30")
    # Partner Center takes no PATCH on the name after creation: it keeps its own, and we say so.
    assert updated["name"] == deal.name
    sync.idle()
    patches = _patches(sync, referral["id"])[before:]
    assert len(patches) == 1, patches
    assert patches[0]["if_match"] == etag and patches[0]["status"] < 300
    paths = {operation["path"] for operation in patches[0]["operations"]}
    assert paths == {"/details/dealValue", "/details/closingDateTime", "/details/notes"}
    assert all(contract().is_patchable(path) for path in paths)
    raw = sync.seller.raw("opportunity", created.opportunity_id)
    assert raw.name == new_name + " ✔"  # the CRM keeps the seller's name; the merge offers it no more
    assert "CRM -> Partner Center: updated" in raw.audit
    assert "Partner Center keeps its own name" in raw.audit
    sync.assert_quiet()  # no second PATCH with the name on later polls


def test_10_solutions_added_and_removed_in_the_crm_follow_in_partner_center(sync: SyncSystem) -> None:
    sync.begin("10 seller adds and removes a solution")
    deal = cosell_deal()
    created = create(sync, deal)
    referral = wait_created(sync, created.opportunity_id)
    first = deal.solutions[0]
    second = Solution(f"SOL-{tag()}", "Streaming Add-on", "Fabrikam")

    sync.seller.add_solution("opportunity", created.opportunity_id, second)
    both = sync.wait_for_referral(
        referral["id"],
        lambda r: len(r["details"]["requirements"].get("solutions") or []) == 2,
        "two solutions in PC",
    )
    ids = {(item["id"], item.get("name")) for item in both["details"]["requirements"]["solutions"]}
    assert ids == {(first.solution_id, first.name), (second.solution_id, second.name)}

    sync.seller.remove_solution("opportunity", created.opportunity_id, first.solution_id)
    one = sync.wait_for_referral(
        referral["id"],
        lambda r: [item["id"] for item in r["details"]["requirements"]["solutions"]] == [second.solution_id],
        "only the second solution in PC",
    )
    assert one["details"]["requirements"]["solutions"][0].get("publisherName") == "Fabrikam"
    sync.assert_quiet()


def test_13_visibility_is_one_way(sync: SyncSystem) -> None:
    sync.begin("13 visibility set, then clearing it is refused")
    deal = cosell_deal(help_needed=None, visible=False)  # a private deal: no help, not visible
    created = create(sync, deal)
    referral = wait_created(sync, created.opportunity_id)
    assert referral["consent"]["consentToShareReferralWithMicrosoftSellers"] is False

    sync.seller.update("opportunity", created.opportunity_id, visible=True)
    sync.wait_for_referral(
        referral["id"], lambda r: r["consent"]["consentToShareReferralWithMicrosoftSellers"] is True, "consent true"
    )
    sync.idle()
    patches_before = len(_patches(sync, referral["id"]))
    etag = sync.partner_center.referral(referral["id"])["eTag"]

    sync.seller.update("opportunity", created.opportunity_id, visible=False)
    raw = sync.wait_for_raw(
        "opportunity", created.opportunity_id, lambda r: "cannot be turned off" in r.audit, "the refusal in the audit"
    )
    restored = sync.wait_for_raw("opportunity", created.opportunity_id, lambda r: r.visible, "Visible back to Yes")
    del raw
    assert restored.visible
    sync.idle()
    assert len(_patches(sync, referral["id"])) == patches_before  # no Partner Center call for it
    assert sync.partner_center.referral(referral["id"])["eTag"] == etag
    sync.assert_quiet()
