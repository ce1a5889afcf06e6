"""Scenarios 11, 12 and 14 of issue 6: accept / decline, won / lost, leads qualified or disqualified."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.e2e.sync.conftest import SyncSystem
from tests.e2e.sync.drivers import RawRecord, cosell_referral
from tests.e2e.sync.test_crm_to_pc import cosell_deal, create, wait_created

pytestmark = [pytest.mark.azurite, pytest.mark.sandbox, pytest.mark.e2e]


def _incoming(sync: SyncSystem) -> tuple[str, RawRecord]:
    shared = sync.partner_center.share_referral(cosell_referral())
    return shared["id"], sync.wait_for_record(shared["id"])


def _status(sync: SyncSystem, referral_id: str, status: str, substatus: str) -> dict[str, object]:
    return sync.wait_for_referral(
        referral_id, lambda r: (r["status"], r["substatus"]) == (status, substatus), f"PC {status}/{substatus}"
    )


@pytest.mark.parametrize("how", ["stage", "response"])
def test_11_edits_while_pending_wait_and_accepting_sends_them(sync: SyncSystem, how: str) -> None:
    if how == "stage" and sync.crm != "salesforce":
        pytest.skip("only Salesforce has a pending stage; Dynamics 365 accepts with Referral response")
    sync.begin(f"11 pending edits held, accept by {how}")
    referral_id, raw = _incoming(sync)
    etag = sync.partner_center.referral(referral_id)["eTag"]

    sync.seller.update("opportunity", raw.id, deal_value=Decimal(300000))
    sync.idle()
    pending = sync.partner_center.referral(referral_id)
    assert pending["eTag"] == etag and pending["status"] == "New"  # not sent while pending

    if how == "stage":
        sync.seller.accept_by_stage(raw.id)
    else:
        sync.seller.update("opportunity", raw.id, referral_response="Accept")
    accepted = _status(sync, referral_id, "Active", "Accepted")
    sync.wait_for_referral(
        referral_id, lambda r: Decimal(str(r["details"]["dealValue"])) == Decimal(300000), "the held edit sent"
    )
    del accepted
    after = sync.wait_for_raw("opportunity", raw.id, lambda r: r.referral_status == "Active / Accepted", "mirror")
    if sync.crm == "salesforce":
        assert after.stage == sync.settings.salesforce_active_stage
    sync.assert_quiet()


@pytest.mark.parametrize("how", ["decline", "closed lost"])
def test_11_declining_a_pending_referral(sync: SyncSystem, how: str) -> None:
    sync.begin(f"11 pending referral: {how}")
    referral_id, raw = _incoming(sync)
    if how == "decline":
        sync.seller.update(
            "opportunity", raw.id, referral_response="Decline", decline_reason="No capacity this quarter"
        )
    else:
        sync.seller.close(raw.id, won=False)
    declined = _status(sync, referral_id, "Closed", "Declined")
    if how == "decline":
        assert declined["statusReason"] == "No capacity this quarter"
    sync.assert_quiet()


@pytest.mark.parametrize("won", [True, False])
def test_12_closing_in_the_crm_closes_the_referral_and_later_edits_stay_home(sync: SyncSystem, won: bool) -> None:
    outcome = "Won" if won else "Lost"
    sync.begin(f"12 closed {outcome.lower()} in the CRM")
    created = create(sync, cosell_deal())
    referral = wait_created(sync, created.opportunity_id)

    sync.seller.close(created.opportunity_id, won=won)
    _status(sync, referral["id"], "Closed", outcome)
    sync.idle()
    etag = sync.partner_center.referral(referral["id"])["eTag"]

    sync.seller.update("opportunity", created.opportunity_id, notes="Post-mortem notes")
    sync.wait_for_raw(
        "opportunity",
        created.opportunity_id,
        lambda r: "is closed in Partner Center" in r.audit,
        "the audit saying the referral is closed",
    )
    assert sync.partner_center.referral(referral["id"])["eTag"] == etag
    sync.assert_quiet()


def test_14_a_qualified_lead_accepts_the_referral_and_the_link_follows_the_opportunity(sync: SyncSystem) -> None:
    sync.begin("14 lead qualified into an opportunity")
    shared = sync.partner_center.share_referral(cosell_referral(type="Independent", qualification="SalesQualified"))
    lead = sync.wait_for_record(shared["id"], kind="lead")

    opportunity_id = sync.seller.qualify_lead(lead.id)
    _status(sync, shared["id"], "Active", "Accepted")
    moved = sync.wait_for_raw(
        "opportunity",
        opportunity_id,
        lambda r: r.referral_id == shared["id"] and r.sync_enabled,
        "the link on the new opportunity",
    )
    assert moved.referral_link and shared["id"] in moved.referral_link
    sync.idle()

    sync.seller.update("opportunity", opportunity_id, notes="Qualified: two workloads")
    sync.wait_for_referral(shared["id"], lambda r: r["details"]["notes"] == "Qualified: two workloads", "notes")
    sync.assert_quiet()


def test_14_a_disqualified_lead_declines_the_referral(sync: SyncSystem) -> None:
    sync.begin("14 lead disqualified")
    shared = sync.partner_center.share_referral(cosell_referral(type="Independent", qualification="SalesQualified"))
    lead = sync.wait_for_record(shared["id"], kind="lead")
    sync.seller.disqualify_lead(lead.id)
    _status(sync, shared["id"], "Closed", "Declined")
    sync.assert_quiet()
