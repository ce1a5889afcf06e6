"""Scenario 17, the other half: Partner Center created the referral but its answer never arrived
(the call timed out). The retry must find the referral by externalReferenceId, not POST again."""

from __future__ import annotations

import pytest

from tests.e2e.sync.conftest import SyncSystem
from tests.e2e.sync.test_crm_to_pc import cosell_deal, create, pc_posts, wait_created

pytestmark = [pytest.mark.azurite, pytest.mark.sandbox, pytest.mark.e2e]

TIMEOUT_SECONDS = 2


@pytest.fixture(scope="module")
def settings_overrides() -> dict[str, str]:
    return {"PC_HTTP_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS)}


def test_17_a_create_whose_answer_is_lost_is_found_again_instead_of_posted_twice(sync: SyncSystem) -> None:
    sync.begin("17c PC create answer lost (timeout) -> lookup, no second POST")
    start = len(sync.pc_control.requests())
    # Partner Center stores the referral at once but answers after the client gave up.
    sync.pc_control.post("referrals/answer-late", {"seconds": TIMEOUT_SECONDS + 1, "count": 1})
    created = create(sync, cosell_deal())

    referral = wait_created(sync, created.opportunity_id)
    sync.idle()
    assert [item["id"] for item in sync.partner_center.referrals_by_external_id(created.opportunity_id)] == [
        referral["id"]
    ]
    assert pc_posts(sync, start) == 1
    lookups = [
        entry
        for entry in sync.pc_control.requests()[start:]
        if entry["method"] == "GET" and entry["route"] == "/v1.0/engagements/referrals"
    ]
    assert lookups, "the retry looks the referral up before creating again"
    sync.assert_quiet()
