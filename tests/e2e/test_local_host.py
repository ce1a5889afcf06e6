"""The local Functions host runs the real triggers: HTTP with auth, timers, queues with poison."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import function_app
from sandbox import credentials
from sandbox.host import LocalHost, QueueOptions, functions_of
from sandbox.simulators import SandboxServices
from shared import __version__, bootstrap
from shared.partner_center.auth import PartnerCenterAuth
from shared.partner_center.token_store import TokenCacheStore
from shared.settings import load_settings
from shared.sync.queues import SYNC_POISON_QUEUE, PartnerCenterChange, QueueProducer
from shared.sync.state import StateStore
from shared.sync.storage import StorageAccount
from tests.e2e import apps
from tests.waiting import wait_until

pytestmark = [pytest.mark.azurite, pytest.mark.e2e]


def start_host(functions: list[Any], environ: dict[str, str], **options: Any) -> LocalHost:
    return LocalHost(functions=functions, environ=environ, http_port=0, **options).start()


@pytest.fixture
def signed_out(app_environment: dict[str, str], storage: StorageAccount) -> None:
    """Tests share one Azurite: make sure no Partner Center sign-in is stored."""
    TokenCacheStore(storage, app_environment["PC_TOKEN_CACHE_KEY"]).delete()


@pytest.fixture
def host(app_environment: dict[str, str], signed_out: None) -> Iterator[LocalHost]:
    running = start_host(
        functions_of([function_app.app], ["health", "health_details"]) + functions_of([apps.test_app], ["echo"]),
        app_environment,
    )
    yield running
    running.stop()


def test_public_health_says_status_and_version_only(host: LocalHost) -> None:
    """No Partner Center sign-in is stored in this environment, so the app cannot sync: degraded,
    and the public answer does not say why."""
    response = httpx.get(f"{host.url}/api/health")
    assert response.status_code == 503
    assert response.json() == {"status": "degraded", "version": __version__}


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_function_level_routes_refuse_a_missing_or_wrong_key(host: LocalHost, key: str | None) -> None:
    params = {"code": key} if key else {}
    assert httpx.get(f"{host.url}/api/health/details", params=params).status_code == 401
    assert httpx.get(f"{host.url}/api/health/details", headers={"x-functions-key": key or ""}).status_code == 401


def test_detailed_health_with_a_function_key(host: LocalHost, empty_sync_queues: None) -> None:
    by_query = httpx.get(f"{host.url}/api/health/details", params={"code": credentials.FUNCTION_KEY})
    by_header = httpx.get(f"{host.url}/api/health/details", headers={"x-functions-key": credentials.FUNCTION_KEY})
    assert by_query.status_code == by_header.status_code == 503
    body = by_query.json()
    assert body["status"] == "degraded"
    assert body["partner_center"]["signed_in"] is False  # the reason it is degraded
    assert body["settings"] == {"valid": True, "problems": []}
    assert body["storage"] == {"reachable": True}
    assert body["queues"] == {"sync": 0, "sync-poison": 0}
    assert isinstance(body["dead_letters"], int)


def test_health_is_degraded_and_names_the_problem_when_settings_are_invalid(
    host: LocalHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_KIND", "sap")
    bootstrap.reset()
    public = httpx.get(f"{host.url}/api/health")
    assert public.status_code == 503 and public.json() == {"status": "degraded", "version": __version__}
    details = httpx.get(f"{host.url}/api/health/details", params={"code": credentials.FUNCTION_KEY}).json()
    assert details["settings"]["valid"] is False
    assert details["settings"]["problems"][0].startswith("CRM_KIND must be")


def test_health_is_degraded_when_storage_is_unreachable(host: LocalHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AzureWebJobsStorage",
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;TableEndpoint=http://127.0.0.1:9/devstoreaccount1",
    )
    bootstrap.reset()
    details = httpx.get(f"{host.url}/api/health/details", params={"code": credentials.FUNCTION_KEY}, timeout=30).json()
    assert details["status"] == "degraded"
    assert details["storage"]["reachable"] is False
    assert "a2V5" not in details["storage"]["error"]  # the account key never shows


def test_routes_pass_method_route_params_query_headers_and_body(host: LocalHost) -> None:
    response = httpx.post(
        f"{host.url}/api/echo/item-1/extra",
        params={"q": "search", "code": credentials.FUNCTION_KEY},
        headers={"x-custom": "hdr"},
        content=b"payload",
    )
    assert response.status_code == 201
    assert response.headers["X-Echo"] == "yes"
    assert response.text == "POST item-1 extra search hdr payload"
    optional_missing = httpx.post(f"{host.url}/api/echo/item-2", params={"code": credentials.FUNCTION_KEY})
    assert optional_missing.text.startswith("POST item-2 None")
    assert httpx.get(f"{host.url}/api/echo/item-1", params={"code": credentials.FUNCTION_KEY}).status_code == 404
    assert httpx.get(f"{host.url}/api/nothing-here").status_code == 404


def test_a_timer_fires_on_its_schedule_resolved_from_an_app_setting(app_environment: dict[str, str]) -> None:
    apps.timer_ticks.clear()
    running = start_host(
        functions_of([apps.test_app], ["tick"]), {**app_environment, "TEST_TIMER_SCHEDULE": "*/1 * * * * *"}
    )
    try:
        wait_until(lambda: len(apps.timer_ticks) >= 2, timeout=10, what="two timer ticks")
    finally:
        running.stop()
    assert all(past_due is False for past_due in apps.timer_ticks)


def test_a_failing_queue_function_is_retried_then_poisoned_and_dead_lettered(
    app_environment: dict[str, str], storage: StorageAccount, empty_sync_queues: None
) -> None:
    state = StateStore(storage)
    dead_letters_before = state.count_dead_letters()
    message = PartnerCenterChange(referral_id="0f9a1c2e-0000-4000-8000-000000000001", event="referral-updated")
    QueueProducer(storage).send(message)

    running = start_host(
        functions_of([apps.test_app], ["always_fails"])
        + functions_of([function_app.app], ["quarantine_poison_sync_request"]),
        app_environment,
        queue_options=QueueOptions(visibility_timeout=0, max_polling_interval=0.2, max_dequeue_count=5),
    )
    try:
        wait_until(lambda: state.count_dead_letters() > dead_letters_before, timeout=60, what="the dead letter")
    finally:
        running.stop()

    attempts = [i for i in running.invocations if i.function == "always_fails"]
    assert [a.outcome for a in attempts] == ["failed"] * 5
    assert [a.detail.split("dequeue_count=")[1].split()[0] for a in attempts] == ["1", "2", "3", "4", "5"]
    poisoned = [i for i in running.invocations if i.function == "quarantine_poison_sync_request"]
    assert [p.outcome for p in poisoned] == ["succeeded"]

    letter = state.list_dead_letters(limit=1)[0]
    assert letter.queue == "sync"
    assert PartnerCenterChange.model_validate_json(letter.payload) == message
    assert letter.dequeue_count == 5
    assert "simulated Salesforce outage" in letter.reason
    assert QueueProducer(storage).depth(SYNC_POISON_QUEUE) == 0


def test_health_is_ok_once_the_partner_center_sign_in_is_stored(
    app_environment: dict[str, str], sandbox_services: SandboxServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = {**app_environment, **sandbox_services.app_settings()}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    account = PartnerCenterAuth.from_settings(load_settings(environment)).login(show=lambda _message: None)
    assert account == credentials.PC_ADMIN_USER

    running = start_host(functions_of([function_app.app], ["health", "health_details"]), environment)
    try:
        public = httpx.get(f"{running.url}/api/health")
        details = httpx.get(f"{running.url}/api/health/details", params={"code": credentials.FUNCTION_KEY}).json()
    finally:
        running.stop()
    assert public.status_code == 200 and public.json() == {"status": "ok", "version": __version__}
    assert details["partner_center"]["signed_in"] is True
    assert details["partner_center"]["account"] == credentials.PC_ADMIN_USER
