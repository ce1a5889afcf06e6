"""Fixtures for the Salesforce tests: a fresh simulator per test on a free port, and sessions that reach it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from requests.adapters import HTTPAdapter

from sandbox.salesforce import SalesforceSimulator
from sandbox.server import RunningServer, serve
from sandbox.tls import ensure_ca
from shared.crm.salesforce import SalesforceAdapter
from shared.settings import Settings, load_settings
from tests.conftest import base_environment


class TrustSandboxCA(HTTPAdapter):
    """Verifies TLS against the sandbox CA even when REQUESTS_CA_BUNDLE is set (requests lets the
    environment override `Session.verify`, so the CA is forced per request here)."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["verify"] = str(ensure_ca().cert_path)
        return super().send(request, *args, **kwargs)


class RedirectToSimulator(TrustSandboxCA):
    """Sends requests for a real Salesforce host to the simulator instead (a test-only stand-in for DNS).

    simple-salesforce builds `https://{domain}.salesforce.com` login URLs itself; mounting this on
    that prefix lets the library's own login code run unchanged against the simulator.
    """

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target.rstrip("/")

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url or "")
        request.url = self.target + parts.path + (f"?{parts.query}" if parts.query else "")
        return super().send(request, *args, **kwargs)


def simulator_session(server: RunningServer, *login_hosts: str) -> requests.Session:
    session = requests.Session()
    session.mount("https://127.0.0.1", TrustSandboxCA())
    for host in login_hosts:
        session.mount(f"https://{host}", RedirectToSimulator(server.url))
    return session


def simulator(server: RunningServer) -> SalesforceSimulator:
    assert isinstance(server.simulator, SalesforceSimulator)
    return server.simulator


@pytest.fixture
def sf_server() -> Iterator[RunningServer]:
    server = serve(lambda url: SalesforceSimulator(url))
    try:
        yield server
    finally:
        server.stop()
        assert server.errors == []


@pytest.fixture
def fresh_org_server() -> Iterator[RunningServer]:
    """An org where our schema was never provisioned."""
    server = serve(lambda url: SalesforceSimulator(url, provisioned=False))
    try:
        yield server
    finally:
        server.stop()
        assert server.errors == []


def adapter_settings(server: RunningServer, **overrides: str) -> Settings:
    """Valid app settings pointing the Salesforce adapter at the simulator (client credentials by default)."""
    environment = base_environment(
        "UseDevelopmentStorage=true",
        SALESFORCE_LOGIN_URL=server.url,
        TLS_CA_BUNDLE=str(ensure_ca().cert_path),
        SALESFORCE_API_VERSION="62.0",
    )
    environment.update(overrides)
    return load_settings(environment)


def make_adapter(server: RunningServer, **overrides: str) -> SalesforceAdapter:
    """An adapter that records its back-off sleeps instead of sleeping (tests await conditions, never sleep)."""
    sleeps: list[float] = []
    adapter = SalesforceAdapter(
        adapter_settings(server, **overrides), retry_delays=(0.5, 1.0, 2.0), sleep=sleeps.append
    )
    adapter.test_sleeps = sleeps  # type: ignore[attr-defined]
    return adapter
