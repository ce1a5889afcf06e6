"""What `make run` does once the local host is up: sign in to Partner Center as the sandbox
Referrals Admin (the identity simulator approves the device code), register the host's webhook
URL, and have Microsoft share a demo co-sell referral, whose signed webhook then reaches the host.

The demo CRM data (sandbox/salesforce.py, sandbox/dataverse.py) holds opportunities with
Sync with Partner Center = Yes, so the first CRM poll sends them the other way. A watcher thread
reports both directions in the console as they complete."""

from __future__ import annotations

import logging
import threading
import time

import httpx

from sandbox import credentials
from shared.http import tls_context
from shared.partner_center.auth import PartnerCenterAuth
from shared.partner_center.registration import WebhookRegistrar
from shared.settings import get_settings
from shared.sync.state import StateStore
from shared.sync.storage import StorageAccount

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
    referral_id = str(response.json().get("id"))
    log.info("Microsoft shared demo referral %s; watch its webhook arrive in the host log", referral_id)
    threading.Thread(target=watch_demo, args=(referral_id,), name="demo-watcher", daemon=True).start()


WATCH_SECONDS = 150.0


def watch_demo(referral_id: str, *, deadline_seconds: float = WATCH_SECONDS) -> None:
    """Log each link as it appears: Microsoft's referral in the CRM, CRM opportunities in Partner Center."""
    settings = get_settings()
    state = StateStore(StorageAccount.from_settings(settings))
    reported: set[str] = set()
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        for link in state.list_links(state="linked"):
            if link.link_id in reported or not (link.crm_id and link.referral_id):
                continue
            reported.add(link.link_id)
            if link.referral_id == referral_id:
                log.info(
                    "✔ Microsoft's demo referral %s is now %s %s %s",
                    referral_id,
                    settings.crm_kind,
                    link.crm_object,
                    link.crm_id,
                )
            elif link.link_id.startswith("crm-"):
                log.info(
                    "✔ %s %s %s is now Partner Center referral %s",
                    settings.crm_kind,
                    link.crm_object,
                    link.crm_id,
                    link.referral_id,
                )
        if link_id_seen(reported, referral_id) and any(item.startswith("crm-") for item in reported):
            log.info("demo complete: referrals flow both ways; see README 'A tour of the sandbox'")
            return
        time.sleep(1.0)  # a console watcher for humans, not a test: polling once a second is enough
    log.warning(
        "the demo did not complete within %.0f s; check `python -m shared sync-status --errors`", deadline_seconds
    )


def link_id_seen(reported: set[str], referral_id: str) -> bool:
    return f"pc-{referral_id}" in reported
