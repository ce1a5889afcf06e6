"""`python -m shared partner-center ...` and the admin registration endpoint, against the simulators.

Real device-code sign-in at the identity simulator, the sign-in stored in Azurite, registration at
the Partner Center simulator, and the endpoint served by the local Functions host.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import function_app
from sandbox import credentials
from sandbox.host import LocalHost, functions_of
from sandbox.identity import IdentitySimulator
from sandbox.partner_center import PartnerCenterSimulator
from sandbox.server import RunningServer
from shared import bootstrap
from shared.admin.cli import main
from shared.http import tls_context
from shared.partner_center.auth import PartnerCenterAuth
from shared.partner_center.client import PartnerCenterMfaRequiredError
from shared.partner_center.registration import WEBHOOK_EVENTS
from shared.partner_center.token_store import TokenCacheStore
from shared.settings import load_settings
from shared.sync.storage import StorageAccount

pytestmark = pytest.mark.azurite

OUR_URL = "https://cosell.example/api/partner-center/events?code=our-function-key"
OTHER_URL = "https://connector.example/api/events?code=other-tools-key"


@pytest.fixture
def pc_environment(
    app_environment: dict[str, str],
    identity_server: RunningServer,
    identity: IdentitySimulator,
    pc_server: RunningServer,
    partner_center: PartnerCenterSimulator,
    storage: StorageAccount,
    ca_bundle: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    """App settings pointing at the simulators, with no Partner Center sign-in stored yet."""
    environment = {
        **app_environment,
        "PC_AUTHORITY_HOST": identity_server.url,
        "PC_WEBHOOK_API_BASE_URL": f"{pc_server.url}/webhooks/v1",
        "TLS_CA_BUNDLE": ca_bundle,
        "PC_WEBHOOK_TRUSTED_ROOTS": ca_bundle,
        "PC_WEBHOOK_CERT_HOSTS": pc_server.url.removeprefix("https://"),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    from azure.core.exceptions import ResourceNotFoundError

    with contextlib.suppress(ResourceNotFoundError):  # tests share one Azurite: start signed out
        TokenCacheStore(storage, credentials.TOKEN_CACHE_KEY).delete()
    yield environment
    bootstrap.reset()


def run(tmp_path: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--local-settings", str(tmp_path / "absent.json"), "partner-center", *argv], out=out)
    return code, out.getvalue()


def _registration_writes(partner_center: PartnerCenterSimulator) -> list[str]:
    return [
        entry["method"]
        for entry in partner_center.requests_log()
        if entry["route"] == "/webhooks/v1/registration" and entry["method"] in ("POST", "PUT")
    ]


def test_login_then_register_webhook_then_status(
    pc_environment: dict[str, str], partner_center: PartnerCenterSimulator, tmp_path: Path
) -> None:
    code, printed = run(tmp_path, "status")
    assert code == 1 and "not signed in" in printed and "partner-center login" in printed

    code, printed = run(tmp_path, "login")
    assert code == 0, printed
    assert "enter the code" in printed  # Entra's instructions: the verification URL and the code
    assert f"signed in as {credentials.PC_ADMIN_USER}" in printed

    code, printed = run(tmp_path, "status")
    assert code == 1, printed  # signed in, but nothing registered yet
    assert f"signed in as {credentials.PC_ADMIN_USER}" in printed and "refresh token healthy" in printed
    assert "✔ the sign-in carries an MFA claim" in printed
    assert "no webhook registered" in printed

    code, printed = run(tmp_path, "register-webhook", "--url", OUR_URL)
    assert code == 0, printed
    assert "before: nothing registered" in printed and "✔ registered" in printed and "WARNING" not in printed
    assert partner_center.state()["registration"]["WebhookUrl"] == OUR_URL
    assert "our-function-key" not in printed and "code=***" in printed

    code, printed = run(tmp_path, "register-webhook", "--url", OUR_URL)
    assert code == 0 and "already registered, nothing changed" in printed
    assert _registration_writes(partner_center) == ["POST"]

    code, printed = run(tmp_path, "status")
    assert code == 0, printed
    assert "webhook: https://cosell.example/api/partner-center/events?code=***" in printed
    assert ", ".join(WEBHOOK_EVENTS) in printed and "our-function-key" not in printed


def test_register_webhook_warns_when_it_replaces_another_url(
    pc_environment: dict[str, str],
    partner_center: PartnerCenterSimulator,
    pc_server: RunningServer,
    webhook_api_token: str,
    ca_bundle: str,
    tmp_path: Path,
) -> None:
    assert run(tmp_path, "login")[0] == 0
    httpx.post(
        f"{pc_server.url}/webhooks/v1/registration",
        json={"WebhookUrl": OTHER_URL, "WebhookEvents": ["referral-created"]},
        headers={"Authorization": f"Bearer {webhook_api_token}"},
        verify=tls_context(ca_bundle),
    ).raise_for_status()

    code, printed = run(tmp_path, "register-webhook", "--url", OUR_URL)

    assert code == 0, printed
    assert "before: https://connector.example/api/events?code=*** for referral-created" in printed
    assert "WARNING: this replaced https://connector.example/api/events?code=***" in printed
    assert "registered (replaced)" in printed and "other-tools-key" not in printed
    assert _registration_writes(partner_center) == ["POST", "PUT"]


def test_register_webhook_failures_exit_1_in_plain_words(
    pc_environment: dict[str, str], partner_center: PartnerCenterSimulator, tmp_path: Path
) -> None:
    code, printed = run(tmp_path, "register-webhook", "--url", OUR_URL)
    assert code == 1 and "webhook registration failed" in printed and "partner-center login" in printed

    code, printed = run(tmp_path, "register-webhook", "--url", "http://cosell.example/api/x")
    assert code == 1 and "--url: url must use https" in printed
    assert partner_center.state()["registration"] is None


def test_register_webhook_send_test_reports_an_undelivered_event(
    pc_environment: dict[str, str], partner_center: PartnerCenterSimulator, pc_server: RunningServer, tmp_path: Path
) -> None:
    assert run(tmp_path, "login")[0] == 0
    httpx.post(
        f"{pc_server.url}/_sandbox/webhooks/settings",
        json={"max_attempts": 2},
        verify=tls_context(pc_environment["TLS_CA_BUNDLE"]),
    ).raise_for_status()
    nobody_listens = "https://127.0.0.1:9/api/partner-center/events"

    code, printed = run(tmp_path, "register-webhook", "--url", nobody_listens, "--send-test", "--wait", "20")

    assert code == 1, printed
    assert "✔ registered" in printed  # the registration itself worked
    assert "NOT delivered" in printed and "no response (ConnectError" in printed


def test_status_shows_a_failed_refresh(
    pc_environment: dict[str, str], identity_server: RunningServer, ca_bundle: str, tmp_path: Path
) -> None:
    assert run(tmp_path, "login")[0] == 0
    httpx.post(
        f"{identity_server.url}/_sandbox/revoke-refresh-tokens", verify=tls_context(ca_bundle)
    ).raise_for_status()
    PartnerCenterAuth.from_settings(load_settings()).refresh()  # what the timer does

    code, printed = run(tmp_path, "status")

    assert code == 1
    assert "last refresh FAILED" in printed and "AADSTS700082" in printed and "partner-center login" in printed


def test_a_sign_in_without_mfa_is_a_health_problem_that_says_how_to_fix_it(
    pc_environment: dict[str, str], identity_server: RunningServer, ca_bundle: str, tmp_path: Path
) -> None:
    httpx.post(
        f"{identity_server.url}/_sandbox/settings", json={"sign_in_mfa": False}, verify=tls_context(ca_bundle)
    ).raise_for_status()
    assert run(tmp_path, "login")[0] == 0

    code, printed = run(tmp_path, "status")

    assert code == 1
    assert "✖ the Partner Center sign-in carries no MFA claim" in printed and "900421" in printed
    assert "partner-center login" in printed and "multi-factor authentication" in printed
    summary = PartnerCenterAuth.from_settings(load_settings()).health_summary()
    assert summary["mfa"] is False and summary["healthy"] is False and "900421" in summary["mfa_problem"]


def test_an_mfa_refusal_by_partner_center_is_kept_for_the_health_page(
    pc_environment: dict[str, str],
    identity_server: RunningServer,
    pc_server: RunningServer,
    ca_bundle: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PC_API_BASE_URL", f"{pc_server.url}/v1.0/engagements")
    bootstrap.reset()
    httpx.post(
        f"{identity_server.url}/_sandbox/settings", json={"sign_in_mfa": False}, verify=tls_context(ca_bundle)
    ).raise_for_status()
    assert run(tmp_path, "login")[0] == 0
    client = bootstrap.partner_center()  # wired to the stored sign-in as the app is
    with pytest.raises(PartnerCenterMfaRequiredError):
        list(client.list_referrals())
    summary = bootstrap.partner_center_auth().health_summary()
    assert summary["healthy"] is False
    assert summary["last_refresh_error"] and "900421" in summary["last_refresh_error"]


# ---- the admin endpoint on the local Functions host -----------------------------------------------
@pytest.fixture
def host(pc_environment: dict[str, str]) -> Iterator[LocalHost]:
    names = ["register_partner_center_webhook", "receive_partner_center_event"]
    running = LocalHost(functions=functions_of([function_app.app], names), environ=pc_environment, http_port=0).start()
    yield running
    running.stop()


ENDPOINT = "/api/manage/partner-center/webhook-registration"


@pytest.mark.e2e
def test_admin_endpoint_needs_a_key_validates_the_body_and_registers_with_a_delivered_test(
    host: LocalHost, partner_center: PartnerCenterSimulator, tmp_path: Path
) -> None:
    key = {"code": credentials.FUNCTION_KEY}
    callback = f"{host.url}/api/partner-center/events?code={credentials.FUNCTION_KEY}"

    assert httpx.post(f"{host.url}{ENDPOINT}", json={"url": callback}).status_code == 401

    bad = httpx.post(f"{host.url}{ENDPOINT}", params=key, json={"url": callback, "send_test": "please"})
    assert bad.status_code == 400
    assert bad.json()["error"]["target"] == "send_test" and "send_test" in bad.json()["error"]["message"]
    missing = httpx.post(f"{host.url}{ENDPOINT}", params=key, content=b"not json")
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "invalidRequest"

    signed_out = httpx.post(f"{host.url}{ENDPOINT}", params=key, json={"url": callback})
    assert signed_out.status_code == 503 and signed_out.json()["error"]["code"] == "signInRequired"
    assert partner_center.state()["registration"] is None

    assert run(tmp_path, "login")[0] == 0
    response = httpx.post(f"{host.url}{ENDPOINT}", params=key, json={"url": callback, "send_test": True}, timeout=90)

    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["ok"], result["action"], result["before"], result["overwritten_url"]) == (
        True,
        "created",
        None,
        None,
    )
    assert result["after"]["url"].endswith("/api/partner-center/events?code=***")
    assert result["test"]["delivered"] is True
    assert result["test"]["attempts"][-1]["response_code"] == "OK"  # our own intake took the signed test event
    assert credentials.FUNCTION_KEY not in response.text
    assert partner_center.state()["registration"]["WebhookUrl"] == callback
