"""A CRM record that names a referral but has no link: adopted when the referral exists, refused
once (not on every poll) when Partner Center does not have it."""

from __future__ import annotations

import pytest

from tests.e2e.sync.conftest import SyncSystem
from tests.e2e.sync.drivers import tag
from tests.e2e.sync.test_crm_to_pc import cosell_deal, create, pc_posts

pytestmark = [pytest.mark.azurite, pytest.mark.sandbox, pytest.mark.e2e]


def test_a_record_naming_a_referral_partner_center_does_not_have_is_refused_once(sync: SyncSystem) -> None:
    sync.begin("adoption: the record names a referral Partner Center does not have")
    start = len(sync.pc_control.requests())
    created = create(sync, cosell_deal(), sync_on=False)
    missing = f"missing-{tag()}"
    sync.seller.update("opportunity", created.opportunity_id, referral_id=missing, sync=True)

    raw = sync.wait_for_raw("opportunity", created.opportunity_id, lambda r: r.sync_status == "Error", "status Error")
    assert f"the referral {missing} named on this record does not exist in Partner Center" in raw.audit
    assert raw.name.endswith(" ✖")
    assert pc_posts(sync, start) == 0  # never created anew: the record says it already has a referral
    sync.assert_quiet()  # our own Error write is recognised when the poll brings it back
    assert sync.seller.raw("opportunity", created.opportunity_id).audit.count("does not exist in Partner Center") == 1
