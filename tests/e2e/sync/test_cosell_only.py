"""Scenario 2 with SYNC_COSELL_ONLY=true: a lead-sharing referral is skipped, and the audit says why."""

from __future__ import annotations

import logging

import pytest

from tests.e2e.sync.conftest import SyncSystem
from tests.e2e.sync.drivers import cosell_referral
from tests.waiting import wait_until

pytestmark = [pytest.mark.azurite, pytest.mark.sandbox, pytest.mark.e2e]


@pytest.fixture(scope="module")
def settings_overrides() -> dict[str, str]:
    return {"SYNC_COSELL_ONLY": "true"}


def test_02_with_cosell_only_a_lead_referral_is_skipped_and_the_audit_says_why(
    sync: SyncSystem, caplog: pytest.LogCaptureFixture
) -> None:
    sync.begin("02b SYNC_COSELL_ONLY=true skips a lead referral")
    caplog.set_level(logging.INFO)
    shared = sync.partner_center.share_referral(cosell_referral(type="Independent", qualification="SalesQualified"))

    entries = wait_until(
        lambda: [entry for entry in sync.audit(shared["id"]) if entry.outcome == "skipped"],
        timeout=30,
        what="the 'skipped' audit entry",
    )
    assert "SYNC_COSELL_ONLY" in entries[0].message
    sync.idle()
    assert sync.seller.find("lead", shared["id"]) == []
    assert sync.seller.find("opportunity", shared["id"]) == []
    assert any("SYNC_COSELL_ONLY" in record.getMessage() for record in caplog.records)
    sync.assert_quiet()


def test_02_with_cosell_only_a_cosell_referral_still_syncs(sync: SyncSystem) -> None:
    sync.begin("02c SYNC_COSELL_ONLY=true still syncs co-sell")
    shared = sync.partner_center.share_referral(cosell_referral())
    sync.wait_for_record(shared["id"])
    sync.assert_quiet()
