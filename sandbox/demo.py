"""What `make run` does once the local host is up: sign in to Partner Center as the sandbox
Referrals Admin (the identity simulator approves the device code), register the host's webhook
URL, and have Microsoft share a demo co-sell referral, whose signed webhook then reaches the host."""

from __future__ import annotations

import logging

import httpx

from sandbox import credentials
from shared.http import tls_context
from shared.partner_center.auth import PartnerCenterAuth
from shared.partner_center.registration import WebhookRegistrar
from shared.settings import get_settings

log = logging.getLogger("sandbox.demo")

DEMO_REFERRAL = {
    "name": "Contoso - Azure migration (demo)",
    "customerProfile": {
        "name": "Contoso Ltd",
        "address": {
            "addressLine1": "1 Main St",
            "city": "Seattle",
            "state": "WA",
            "postalCode": "98052",
            "country": "US",
        },
        "team": [{"firstName": "Avery", "lastName": "Demo", "email": "avery.demo@contoso.example"}],
    },
    "details": {
        "dealValue": 120000,
        "currency": "USD",
        "closingDateTime": "2027-03-31T00:00:00Z",
        "notes": "Demo referral",
    },
}


def after_host_started(host_url: str) -> None:
    settings = get_settings()
    auth = PartnerCenterAuth.from_settings(settings)
    account = auth.login(show=lambda message: log.info("Partner Center sign-in: %s", message))
    log.info("signed in to the Partner Center simulator as %s", account)
    result = WebhookRegistrar.from_settings(settings, auth.token).ensure(
        f"{host_url}/api/partner-center/events?code={credentials.FUNCTION_KEY}"
    )
    log.info("webhook registration: %s", result.action)
    base = settings.pc_api_base_url.split("/v1.0/")[0]
    response = httpx.post(
        f"{base}/_sandbox/incoming-referral", json=DEMO_REFERRAL, verify=tls_context(settings.tls_ca_bundle), timeout=30
    )
    response.raise_for_status()
    log.info("Microsoft shared demo referral %s; watch its webhook arrive in the host log", response.json().get("id"))
