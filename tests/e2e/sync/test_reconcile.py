"""Scenario 21: a webhook delivery Partner Center lost is picked up by the reconcile timer."""

from __future__ import annotations

import pytest

from sandbox.simulators import SandboxServices
from tests.e2e.sync.conftest import SyncSystem
from tests.e2e.sync.drivers import cosell_referral

pytestmark = [pytest.mark.azurite, pytest.mark.sandbox, pytest.mark.e2e]


@pytest.fixture(scope="module")
def settings_overrides(crm: str, sandbox_services: SandboxServices) -> dict[str, str]:
    # The first reconcile run looks back 24 hours: start from an empty Partner Center, so referrals
    # of earlier scenarios (linked to the other CRM, or to no longer reachable records) stay out of it.
    # The host registers its webhook again right after.
    import httpx

    from shared.http import tls_context

    ca = sandbox_services.app_settings()["TLS_CA_BUNDLE"]
    httpx.post(f"{sandbox_services.partner_center.url}/_sandbox/reset", verify=tls_context(ca)).raise_for_status()
    return {"PC_RECONCILE_SCHEDULE": "*/3 * * * * *"}


def test_21_a_dropped_webhook_is_picked_up_by_the_reconcile_timer(sync: SyncSystem) -> None:
    sync.begin("21 dropped webhook -> reconcile")
    sync.partner_center.drop_webhooks(1)
    shared = sync.partner_center.share_referral(cosell_referral())
    delivery = [d for d in sync.pc_control.state()["deliveries"] if shared["id"] in d["resource_uri"]]
    assert [d["status"] for d in delivery] == ["dropped"]

    raw = sync.wait_for_record(shared["id"])
    assert raw.name == shared["name"] + " ✔"
    assert any(i.function == "reconcile_partner_center" for i in sync.host.invocations)
    sync.assert_quiet()
