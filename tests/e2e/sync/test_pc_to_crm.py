"""Scenarios 1-6 of issue 6: Partner Center -> CRM, for Salesforce and Dynamics 365."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

import pytest

from tests.e2e.sync.conftest import SyncSystem
from tests.e2e.sync.drivers import Account, Contact, cosell_referral, microsoft_edit, pc_edit, tag

pytestmark = [pytest.mark.azurite, pytest.mark.sandbox, pytest.mark.e2e]

REFERRAL_LINK = "https://partner.microsoft.com/dashboard/referrals/v2/opportunities/{id}"


def _single_currency(sync: SyncSystem) -> bool:
    """The sandbox Salesforce org is single-currency: no CurrencyIsoCode to hold a deal currency."""
    return sync.crm == "salesforce" and sync.settings.deal_currency_field == "CurrencyIsoCode"


def test_01_a_new_cosell_referral_becomes_a_pending_opportunity_with_every_mapped_field(sync: SyncSystem) -> None:
    sync.begin("01 Microsoft shares a co-sell referral")
    shared = sync.partner_center.share_referral(cosell_referral())
    referral_id = shared["id"]

    raw = sync.wait_for_record(referral_id)
    assert raw.name == shared["name"] + " ✔"
    assert raw.sync_enabled
    assert raw.referral_status == "New / Pending"
    assert raw.referral_link == REFERRAL_LINK.format(id=referral_id)
    assert raw.engagement_id == shared["engagementId"]
    assert f"created from Partner Center referral {referral_id}" in raw.audit
    assert len(sync.seller.find("opportunity", referral_id)) == 1

    record = sync.read("opportunity", raw.id)
    if sync.crm == "salesforce":
        assert record.stage.stage_name == sync.settings.salesforce_pending_stage
    assert not record.stage.is_closed
    assert record.name == shared["name"]
    details = shared["details"]
    assert record.deal_value == Decimal("250000")
    assert record.currency == (None if _single_currency(sync) else "USD")
    assert record.close_date == dt.date(2027, 3, 31)
    assert record.notes == details["notes"]
    profile = shared["customerProfile"]
    assert record.account is not None
    assert (record.account.name, record.account.postal_code) == (profile["name"], profile["address"]["postalCode"])
    assert (record.account.street, record.account.city, record.account.state) == ("1 Microsoft Way", "Redmond", "WA")
    assert record.account.country == "US"
    assert [contact.email for contact in record.contacts] == [profile["team"][0]["email"]]
    assert record.contacts[0].last_name == profile["team"][0]["lastName"]
    solution = details["requirements"]["solutions"][0]
    assert [(s.solution_id, s.name, s.publisher) for s in record.solutions] == [
        (solution["id"], solution["name"], solution["publisherName"])
    ]
    assert record.connector.help_needed == "CustomerTechnicalArchitecture"
    assert record.connector.visible_to_microsoft is True
    assert record.connector.referral_id == referral_id
    sync.assert_quiet()


def test_01_an_existing_account_and_contact_are_reused(sync: SyncSystem) -> None:
    sync.begin("01b account matched by name + postal code, contact by email")
    token = tag()
    account = Account(name=f"Northwind {token}", postal_code=f"N{token[:4]}", country="US")
    account_id = sync.seller.create_account(account)
    email = f"kim.{token}@northwind.example"
    contact_id = sync.seller.create_contact(Contact("Kim", "Akers", email), account_id)
    referral = cosell_referral()
    referral["customerProfile"]["name"] = account.name
    referral["customerProfile"]["address"]["postalCode"] = account.postal_code
    referral["customerProfile"]["team"][0]["email"] = email
    shared = sync.partner_center.share_referral(referral)

    raw = sync.wait_for_record(shared["id"])
    record = sync.read("opportunity", raw.id)
    assert record.account is not None and record.account.id == account_id
    assert [contact.id for contact in record.contacts] == [contact_id]
    sync.assert_quiet()


def test_02_a_lead_sharing_referral_becomes_a_lead(sync: SyncSystem) -> None:
    sync.begin("02 a lead-sharing referral becomes a lead")
    referral = cosell_referral(type="Independent", qualification="SalesQualified")
    shared = sync.partner_center.share_referral(referral)

    raw = sync.wait_for_record(shared["id"], kind="lead")
    assert raw.name.endswith(" ✔") and raw.sync_enabled
    assert sync.seller.find("opportunity", shared["id"]) == []
    record = sync.read("lead", raw.id)
    assert record.account is not None and record.account.name == shared["customerProfile"]["name"]
    assert [contact.email for contact in record.contacts] == [shared["customerProfile"]["team"][0]["email"]]
    sync.assert_quiet()


def test_03_partner_center_updates_reach_the_crm_and_leave_crm_only_fields_alone(sync: SyncSystem) -> None:
    sync.begin("03 Partner Center updates value, close date, notes")
    shared = sync.partner_center.share_referral(cosell_referral())
    raw = sync.wait_for_record(shared["id"])
    before = sync.read("opportunity", raw.id)

    sync.partner_center.edit(
        shared["id"],
        [
            pc_edit("/details/dealValue", 310000),
            pc_edit("/details/closingDateTime", "2027-06-30T00:00:00Z"),
            pc_edit("/details/notes", "Scope grew: SAP and BW."),
        ],
    )
    sync.wait_for_raw("opportunity", raw.id, lambda r: "Partner Center -> CRM: updated" in r.audit, "the update")
    after = sync.read("opportunity", raw.id)
    assert after.deal_value == Decimal("310000")
    assert after.close_date == dt.date(2027, 6, 30)
    assert after.notes == "Scope grew: SAP and BW."
    line = next(line for line in after.connector.audit.splitlines() if "Partner Center -> CRM: updated" in line)
    assert all(word in line for word in ("deal value", "close date", "notes"))
    # CRM-only and untouched fields stay as they were
    assert (after.name, after.stage, after.account, after.contacts, after.solutions) == (
        before.name,
        before.stage,
        before.account,
        before.contacts,
        before.solutions,
    )
    assert after.owner_id == before.owner_id
    sync.assert_quiet()


def test_04_microsofts_crm_id_fills_the_microsoft_crm_identifier(sync: SyncSystem) -> None:
    sync.begin("04 Microsoft accepts and sets its CRM id")
    shared = sync.partner_center.share_referral(cosell_referral())
    raw = sync.wait_for_record(shared["id"])
    assert raw.microsoft_crm_id is None

    sync.partner_center.as_microsoft(
        shared["id"],
        [
            microsoft_edit("/status", "Active"),
            microsoft_edit("/substatus", "Accepted"),
            microsoft_edit("/trackingInfo/microsoftMsxId", "7-MSX" + tag()),
        ],
    )
    msx = sync.partner_center.referral(shared["id"])["trackingInfo"]["microsoftMsxId"]
    filled = sync.wait_for_raw("opportunity", raw.id, lambda r: r.microsoft_crm_id == msx, "the Microsoft CRM id")
    assert filled.sync_status == "Synced"
    assert sync.read("opportunity", raw.id).connector.microsoft_crm_id == msx
    sync.assert_quiet()


@pytest.mark.parametrize(
    ("substatus", "won"), [("Won", True), ("Lost", False), ("Declined", False), ("Expired", False)]
)
def test_05_partner_center_closing_the_referral_closes_the_crm_record(
    sync: SyncSystem, substatus: str, won: bool
) -> None:
    sync.begin(f"05 Partner Center closes the referral {substatus}")
    shared = sync.partner_center.share_referral(cosell_referral())
    raw = sync.wait_for_record(shared["id"])
    if substatus == "Expired":
        sync.partner_center.expire(shared["id"])
    else:
        operations = [
            pc_edit("/status", "Closed"),
            pc_edit("/substatus", substatus),
        ]
        if substatus != "Won":
            operations.append(pc_edit("/statusReason", "Customer chose another path"))
        sync.partner_center.edit(shared["id"], operations)

    closed = sync.wait_for_raw("opportunity", raw.id, lambda r: r.closed, f"the record closed {substatus}")
    assert closed.won is won
    sync.wait_for_raw(
        "opportunity", raw.id, lambda r: r.referral_status == f"Closed / {substatus}", "the status mirror"
    )
    record = sync.read("opportunity", raw.id)
    assert record.stage.is_closed and record.stage.is_won is won
    if sync.crm == "salesforce":
        expected = sync.settings.salesforce_won_stage if won else sync.settings.salesforce_lost_stage
        assert record.stage.stage_name == expected
    sync.assert_quiet()


def test_06_duplicate_and_out_of_order_deliveries_give_one_record_with_the_latest_state(sync: SyncSystem) -> None:
    sync.begin("06 three duplicate deliveries and an out-of-order older event")
    sync.partner_center.drop_webhooks(2)  # Partner Center's own deliveries are lost; we play them by hand
    shared = sync.partner_center.share_referral(cosell_referral())
    created_at = shared["createdDateTime"]
    sync.partner_center.edit(shared["id"], [pc_edit("/details/dealValue", 275000)])

    statuses: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: statuses.append(sync.deliver_event("referral-created", shared["id"], created_at))
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200, 200, 200]  # each delivery answered "OK", as Microsoft's sample
    raw = sync.wait_for_record(shared["id"])
    sync.settle()
    # the older event arrives last
    assert 200 <= sync.deliver_event("referral-created", shared["id"], created_at) < 300
    sync.idle()

    assert len(sync.seller.find("opportunity", shared["id"])) == 1
    record = sync.read("opportunity", raw.id)
    assert record.deal_value == Decimal("275000")
    sync.assert_quiet()
