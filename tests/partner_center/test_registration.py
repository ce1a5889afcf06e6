"""Webhook registration against the Partner Center simulator: GET -> compare -> POST/PUT, validation events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox import credentials
from sandbox.host import LocalHost
from sandbox.partner_center import PartnerCenterSimulator
from sandbox.server import RunningServer
from shared.http import tls_context
from shared.partner_center.client import PartnerCenterAuthError, PartnerCenterUnavailableError
from shared.partner_center.registration import (
    WEBHOOK_EVENTS,
    DeliveryAttempt,
    WebhookRegistrar,
    handle_registration_request,
    redact_url,
    validate_webhook_url,
)
from shared.settings import Settings, load_settings
from tests.conftest import base_environment
from tests.partner_center import test_webhook_e2e

# The events endpoint on the local Functions host, exactly as the intake's end-to-end test runs it.
events_host = test_webhook_e2e.host

OUR_URL = "https://cosell.example/api/partner-center/events?code=our-function-key"
OTHER_URL = "https://connector.example/api/events?code=other-tools-key"


@pytest.fixture
def pc_settings(pc_server: RunningServer, ca_bundle: str) -> Settings:
    return load_settings(
        base_environment(
            "UseDevelopmentStorage=true",
            PC_WEBHOOK_API_BASE_URL=f"{pc_server.url}/webhooks/v1",
            TLS_CA_BUNDLE=ca_bundle,
        )
    )


@pytest.fixture
def registrar(pc_settings: Settings, webhook_api_token: str) -> Iterator[WebhookRegistrar]:
    scopes: list[str] = []

    def token(scope: str) -> str:
        scopes.append(scope)
        return webhook_api_token

    built = WebhookRegistrar.from_settings(pc_settings, token)
    yield built
    built.close()
    assert set(scopes) == {"https://api.partnercenter.microsoft.com/.default"}


def _writes(partner_center: PartnerCenterSimulator) -> list[str]:
    return [
        entry["method"]
        for entry in partner_center.requests_log()
        if entry["route"] == "/webhooks/v1/registration" and entry["method"] in ("POST", "PUT")
    ]


def _register_directly(pc_server: RunningServer, token: str, ca_bundle: str, url: str, events: list[str]) -> None:
    httpx.post(
        f"{pc_server.url}/webhooks/v1/registration",
        json={"WebhookUrl": url, "WebhookEvents": events},
        headers={"Authorization": f"Bearer {token}"},
        verify=tls_context(ca_bundle),
    ).raise_for_status()


def test_first_registration_posts_and_a_second_identical_call_changes_nothing(
    registrar: WebhookRegistrar, partner_center: PartnerCenterSimulator
) -> None:
    first = registrar.ensure(OUR_URL)
    assert (first.action, first.before, first.overwritten_url) == ("created", None, None)
    assert first.after.url == OUR_URL and set(first.after.events) == set(WEBHOOK_EVENTS)
    registration = partner_center.state()["registration"]
    assert registration["WebhookUrl"] == OUR_URL
    assert registration["WebhookEvents"] == list(WEBHOOK_EVENTS)
    assert _writes(partner_center) == ["POST"]

    second = registrar.ensure(OUR_URL)
    assert second.action == "unchanged" and second.before == second.after
    assert _writes(partner_center) == ["POST"]  # no second POST, no PUT


def test_another_url_is_replaced_with_put_and_reported_with_its_key_masked(
    registrar: WebhookRegistrar,
    partner_center: PartnerCenterSimulator,
    pc_server: RunningServer,
    webhook_api_token: str,
    ca_bundle: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _register_directly(pc_server, webhook_api_token, ca_bundle, OTHER_URL, ["referral-created", "invoice-ready"])

    result = registrar.ensure(OUR_URL)

    assert result.action == "updated" and result.overwritten_url == OTHER_URL
    assert result.before is not None and result.before.events == ("referral-created", "invoice-ready")
    assert partner_center.state()["registration"]["WebhookUrl"] == OUR_URL
    assert partner_center.state()["registration"]["WebhookEvents"] == list(WEBHOOK_EVENTS)
    assert _writes(partner_center) == ["POST", "PUT"]  # the POST is our seed
    shown = result.as_json()
    assert shown["overwritten_url"] == "https://connector.example/api/events?code=***"
    assert "other-tools-key" not in str(shown) and "our-function-key" not in str(shown)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("OVERWRITTEN" in message and "connector.example" in message for message in warnings)
    assert "other-tools-key" not in caplog.text


def test_same_url_missing_an_event_is_completed_with_put(
    registrar: WebhookRegistrar,
    partner_center: PartnerCenterSimulator,
    pc_server: RunningServer,
    webhook_api_token: str,
    ca_bundle: str,
) -> None:
    _register_directly(pc_server, webhook_api_token, ca_bundle, OUR_URL, ["referral-created", "referral-updated"])
    result = registrar.ensure(OUR_URL)
    assert result.action == "updated" and result.overwritten_url is None
    assert set(partner_center.state()["registration"]["WebhookEvents"]) == set(WEBHOOK_EVENTS)


def test_a_registration_made_between_our_read_and_our_post_is_replaced_and_reported(
    registrar: WebhookRegistrar,
    partner_center: PartnerCenterSimulator,
    pc_server: RunningServer,
    webhook_api_token: str,
    ca_bundle: str,
) -> None:
    _register_directly(pc_server, webhook_api_token, ca_bundle, OTHER_URL, ["referral-created"])
    # Our first GET sees "none" (as if it ran just before the other tool registered).
    httpx.post(
        f"{pc_server.url}/_sandbox/faults",
        json={"method": "GET", "path_prefix": "/webhooks/v1/registration", "status": 404, "count": 1},
        verify=tls_context(ca_bundle),
    ).raise_for_status()

    result = registrar.ensure(OUR_URL)

    assert result.action == "updated" and result.overwritten_url == OTHER_URL
    assert _writes(partner_center) == ["POST", "POST", "PUT"]  # seed, our refused POST, our PUT
    assert partner_center.state()["registration"]["WebhookUrl"] == OUR_URL


def test_registration_api_errors_are_typed(
    pc_settings: Settings, webhook_api_token: str, pc_server: RunningServer, partner_center: PartnerCenterSimulator
) -> None:
    delays: list[float] = []
    registrar = WebhookRegistrar.from_settings(pc_settings, lambda scope: webhook_api_token, sleep=delays.append)
    httpx.post(
        f"{pc_server.url}/_sandbox/faults",
        json={"path_prefix": "/webhooks/v1/registration", "status": 500, "count": 10},
        verify=tls_context(pc_settings.tls_ca_bundle),
    ).raise_for_status()
    try:
        with pytest.raises(PartnerCenterUnavailableError) as raised:
            registrar.current()
    finally:
        registrar.close()
    assert raised.value.status == 500 and raised.value.code == "500"
    assert len(delays) == 4  # five attempts in all: a 500 is retried before it is surfaced


def test_bad_urls_are_refused_naming_the_field() -> None:
    assert validate_webhook_url(" http://127.0.0.1:7071/api/x ") == "http://127.0.0.1:7071/api/x"
    for bad in ("http://cosell.example/api/x", "ftp://cosell.example/x", "/api/x", "https://h/x#frag"):
        with pytest.raises(ValueError, match="^url "):
            validate_webhook_url(bad)
    assert redact_url("https://h/p?a=1&code=k&sig=s") == "https://h/p?a=1&code=***&sig=***"


# ---- validation events, delivered to the local Functions host ------------------------------------
@pytest.mark.azurite
@pytest.mark.e2e
def test_send_test_reports_delivery_to_the_running_host(
    registrar: WebhookRegistrar, partner_center: PartnerCenterSimulator, events_host: LocalHost
) -> None:
    callback = f"{events_host.url}/api/partner-center/events?code={credentials.FUNCTION_KEY}"
    result = registrar.ensure(callback, send_test=True, test_timeout_seconds=20, poll_seconds=0.1)

    assert result.test is not None and result.test.delivered and result.ok
    assert result.test.attempts[-1].response_code == "OK"  # the intake answers test-created with 200 ("OK")
    recorded = partner_center.state()["validation_events"]
    assert [event["correlationId"] for event in recorded] == [result.test.correlation_id]
    assert "delivered" in result.test.describe()


@pytest.mark.azurite
@pytest.mark.e2e
def test_send_test_reports_a_refused_delivery(
    registrar: WebhookRegistrar,
    partner_center: PartnerCenterSimulator,
    pc_server: RunningServer,
    events_host: LocalHost,
    ca_bundle: str,
) -> None:
    httpx.post(
        f"{pc_server.url}/_sandbox/webhooks/settings", json={"max_attempts": 2}, verify=tls_context(ca_bundle)
    ).raise_for_status()
    without_key = f"{events_host.url}/api/partner-center/events"  # the host answers 401

    result = registrar.ensure(without_key, send_test=True, test_timeout_seconds=20, poll_seconds=0.1)

    assert result.test is not None and not result.test.delivered and not result.ok
    assert result.test.status == "parked"  # the simulator's final status after max_attempts
    assert [attempt.response_code for attempt in result.test.attempts] == ["Unauthorized", "Unauthorized"]
    assert "NOT delivered" in result.test.describe() and "Unauthorized" in result.test.describe()


def test_the_validation_event_limit_is_reported_without_waiting(
    registrar: WebhookRegistrar,
    partner_center: PartnerCenterSimulator,
    pc_server: RunningServer,
    webhook_api_token: str,
    ca_bundle: str,
) -> None:
    registrar.ensure("https://127.0.0.1:9/unreachable")  # deliveries fail; only the sending matters here
    for _ in range(2):  # Partner Center allows two validation events a minute
        httpx.post(
            f"{pc_server.url}/webhooks/v1/registration/validationEvents",
            headers={"Authorization": f"Bearer {webhook_api_token}"},
            verify=tls_context(ca_bundle),
        ).raise_for_status()

    outcome = registrar.send_test(timeout_seconds=5, poll_seconds=0.1)

    assert (outcome.delivered, outcome.status) == (False, "not sent")
    assert outcome.error is not None and "429" in outcome.error and "2 validation events per minute" in outcome.error
    sent = [entry for entry in partner_center.requests_log() if entry["path"].endswith("/validationEvents")]
    assert [entry["status"] for entry in sent] == [200, 200, 429]  # refused once, not retried for a minute


# ---- the admin endpoint's request handling (the HTTP trigger itself: test_commands.py) -------------
def test_admin_request_body_errors_name_the_field() -> None:
    def never() -> Any:
        raise AssertionError("a bad body must not reach Partner Center")

    cases: dict[bytes, str] = {
        b"": "",
        b"{}": "url",
        b'{"url": 5}': "url",
        b'{"url": "http://cosell.example/x"}': "url",
        b'{"url": "https://h/x", "send_test": "yes"}': "send_test",
        b'{"url": "https://h/x", "extra": 1}': "extra",
    }
    for body, field in cases.items():
        status, answer = handle_registration_request(body, never)
        assert status == 400, body
        assert answer["error"]["code"] == "invalidRequest"
        assert answer["error"].get("target", "") == field, (body, answer)


@pytest.mark.parametrize(
    ("wire", "delivered", "shown"),
    [
        ({"responseCode": "OK", "responseMessage": "", "systemError": False}, True, "OK"),  # Microsoft's sample
        ({"responseCode": "Accepted", "systemError": False}, True, "Accepted"),
        ({"responseCode": 200, "responseMessage": "OK", "systemError": None}, True, "HTTP 200 OK"),  # older text
        ({"responseCode": "Unauthorized", "systemError": False}, False, "Unauthorized"),
        ({"responseCode": 0, "systemError": "ConnectError: refused"}, False, "no response (ConnectError: refused)"),
        ({"responseCode": "", "responseMessage": "timed out", "systemError": True}, False, "no response (timed out)"),
    ],
)
def test_validation_results_are_read_in_both_shapes(wire: dict[str, object], delivered: bool, shown: str) -> None:
    attempt = DeliveryAttempt.from_wire(wire)
    assert attempt.succeeded is delivered
    assert attempt.describe() == shown


def test_a_403_names_the_roles_the_webhook_api_asks_for(
    registrar: WebhookRegistrar, pc_server: RunningServer, ca_bundle: str
) -> None:
    httpx.post(
        f"{pc_server.url}/_sandbox/faults",
        json={"path_prefix": "/webhooks/v1/registration", "status": 403, "count": 1},
        verify=tls_context(ca_bundle),
    ).raise_for_status()
    with pytest.raises(PartnerCenterAuthError) as refused:
        registrar.current()
    assert refused.value.status == 403
    assert "Admin agent" in str(refused.value) and "Referrals Admin" in str(refused.value)
