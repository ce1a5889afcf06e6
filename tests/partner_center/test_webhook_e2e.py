"""End to end on the local Functions host: a referral created in the simulator lands one message on `sync`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import function_app
from sandbox import credentials
from sandbox.host import LocalHost, functions_of
from sandbox.partner_center import PartnerCenterSimulator
from sandbox.server import RunningServer
from shared import bootstrap
from shared.http import tls_context
from shared.sync.queues import SYNC_QUEUE, PartnerCenterChange, parse_sync_request
from shared.sync.storage import StorageAccount
from tests.partner_center.wire import create_request
from tests.waiting import wait_until

pytestmark = [pytest.mark.azurite, pytest.mark.e2e]


@pytest.fixture
def host(
    app_environment: dict[str, str], pc_server: RunningServer, ca_bundle: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalHost]:
    environment = {
        **app_environment,
        "TLS_CA_BUNDLE": ca_bundle,
        "PC_WEBHOOK_TRUSTED_ROOTS": ca_bundle,
        "PC_WEBHOOK_CERT_HOSTS": pc_server.url.removeprefix("https://"),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    running = LocalHost(
        functions=functions_of([function_app.app], ["receive_partner_center_event"]), environ=environment, http_port=0
    ).start()
    yield running
    running.stop()
    bootstrap.reset()


def _messages(storage: StorageAccount) -> list[Any]:
    return list(storage.queue_client(SYNC_QUEUE).peek_messages(max_messages=32))


def test_created_referral_lands_one_message_on_sync(
    host: LocalHost,
    partner_center: PartnerCenterSimulator,
    pc_server: RunningServer,
    pc_token: str,
    webhook_api_token: str,
    ca_bundle: str,
    storage: StorageAccount,
    empty_sync_queues: None,
) -> None:
    verify = tls_context(ca_bundle)
    callback = f"{host.url}/api/partner-center/events?code={credentials.FUNCTION_KEY}"
    httpx.post(
        f"{pc_server.url}/webhooks/v1/registration",
        json={"WebhookUrl": callback, "WebhookEvents": ["referral-created", "referral-updated"]},
        headers={"Authorization": f"Bearer {webhook_api_token}"},
        verify=verify,
    ).raise_for_status()
    created = httpx.post(
        f"{pc_server.url}/v1.0/engagements/referrals",
        json=create_request(),
        headers={"Authorization": f"Bearer {pc_token}"},
        verify=verify,
    ).json()

    wait_until(lambda: partner_center.state()["deliveries"][0]["status"] == "delivered", timeout=15, what="delivery")
    assert partner_center.state()["deliveries"][0]["attempts"][-1]["responseCode"] == "OK"  # answered 200
    messages = wait_until(lambda: _messages(storage), timeout=10, what="a sync message")
    assert len(messages) == 1
    message = parse_sync_request(messages[0].content)
    assert isinstance(message, PartnerCenterChange)
    assert (message.referral_id, message.event) == (created["id"], "referral-created")


def test_unsigned_post_is_refused_by_the_host(
    host: LocalHost, storage: StorageAccount, empty_sync_queues: None
) -> None:
    response = httpx.post(
        f"{host.url}/api/partner-center/events",
        params={"code": credentials.FUNCTION_KEY},
        content=b'{"EventName":"referral-created","ResourceUri":"https://h/engagements/v1/referrals/x"}',
    )
    assert response.status_code == 401
    assert _messages(storage) == []
