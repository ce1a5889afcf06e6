"""Scenario 20: settings variants. Sync marks off, other Salesforce stage names, and (Dynamics 365)
another deal value field. The sandbox orgs offer no second currency or country field to point the
currency / country settings at without provisioning custom fields, so those variants are left out.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.e2e.sync.conftest import SyncSystem
from tests.e2e.sync.drivers import cosell_referral
from tests.e2e.sync.test_crm_to_pc import cosell_deal, create, wait_created

pytestmark = [pytest.mark.azurite, pytest.mark.sandbox, pytest.mark.e2e]


@pytest.fixture(scope="module")
def settings_overrides(crm: str) -> dict[str, str]:
    variant = {
        "SHOW_SYNC_MARK_IN_NAME": "false",
        "SALESFORCE_PENDING_STAGE": "Needs Analysis",
        "SALESFORCE_ACTIVE_STAGE": "Value Proposition",
    }
    if crm == "dynamics":
        variant["CRM_DEAL_VALUE_FIELD"] = "budgetamount"
    return variant


def test_20_an_incoming_referral_with_marks_off_and_other_stage_and_value_fields(sync: SyncSystem) -> None:
    sync.begin("20 settings variants: PC -> CRM")
    shared = sync.partner_center.share_referral(cosell_referral())
    raw = sync.wait_for_record(shared["id"])
    assert raw.name == shared["name"]  # no mark at all
    record = sync.read("opportunity", raw.id)
    assert record.deal_value == Decimal(250000)  # read from the configured field
    if sync.crm == "salesforce":
        assert record.stage.stage_name == "Needs Analysis"
        sync.seller.update("opportunity", raw.id, referral_response="Accept")
        sync.wait_for_raw("opportunity", raw.id, lambda r: r.stage == "Value Proposition", "the active stage")
    else:
        rows = sync.crm_control.state()["records"]["opportunities"]
        row = next(item for item in rows if item.get("pcs_referralid") == shared["id"])
        assert row.get("budgetamount") == 250000 and not row.get("estimatedvalue")
    sync.assert_quiet()


def test_20_a_seller_opportunity_with_marks_off(sync: SyncSystem) -> None:
    sync.begin("20 settings variants: CRM -> PC")
    deal = cosell_deal()
    created = create(sync, deal)
    referral = wait_created(sync, created.opportunity_id)
    assert sync.seller.raw("opportunity", created.opportunity_id).name == deal.name
    assert referral["name"] == deal.name
    if sync.crm == "dynamics":
        assert Decimal(str(referral["details"]["dealValue"])) == Decimal(91000)
    sync.assert_quiet()
