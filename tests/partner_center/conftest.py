"""Fixtures for the Partner Center tests: the sandbox identity provider and Partner Center simulator on free ports."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sandbox import credentials
from sandbox.identity import DEVICE_CODE_GRANT, IdentitySimulator, identity_factory
from sandbox.partner_center import PartnerCenterSimulator, partner_center_factory
from sandbox.server import RunningServer, serve
from sandbox.tls import ensure_ca
from shared.http import tls_context


@pytest.fixture(scope="session")
def ca_bundle() -> str:
    return str(ensure_ca().cert_path)


@pytest.fixture(scope="session")
def identity_server() -> Iterator[RunningServer]:
    # A 1 s polling interval keeps device-code tests fast; everything else is Entra's default.
    server = serve(identity_factory(device_code_interval_seconds=1), port=0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def identity(identity_server: RunningServer) -> IdentitySimulator:
    """The identity simulator, reset before each test."""
    simulator = identity_server.simulator
    assert isinstance(simulator, IdentitySimulator)
    with simulator.lock:
        simulator.reset_records()
    return simulator


@pytest.fixture(scope="session")
def pc_server() -> Iterator[RunningServer]:
    # Fast retries so delivery tests finish in well under a second per attempt.
    server = serve(partner_center_factory(backoff_seconds=0.05, max_backoff_seconds=0.2), port=0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def partner_center(pc_server: RunningServer, ca_bundle: str) -> PartnerCenterSimulator:
    """The Partner Center simulator, reset before each test (through its control API)."""
    simulator = pc_server.simulator
    assert isinstance(simulator, PartnerCenterSimulator)
    httpx.post(f"{pc_server.url}/_sandbox/reset", verify=tls_context(ca_bundle)).raise_for_status()
    return simulator


def delegated_token(identity_url: str, scope: str, ca_bundle: str) -> str:
    """Sign in as the sandbox Referrals Admin with the device code flow (approved at first poll)."""
    tenant_url = f"{identity_url}/{credentials.TENANT_ID}/oauth2/v2.0"
    verify = tls_context(ca_bundle)
    flow = httpx.post(
        f"{tenant_url}/devicecode",
        data={"client_id": credentials.PC_CLIENT_ID, "scope": f"{scope} offline_access openid profile"},
        verify=verify,
    ).json()
    token = httpx.post(
        f"{tenant_url}/token",
        data={
            "grant_type": DEVICE_CODE_GRANT,
            "client_id": credentials.PC_CLIENT_ID,
            "client_secret": credentials.PC_CLIENT_SECRET,
            "device_code": flow["device_code"],
        },
        verify=verify,
    ).json()
    return str(token["access_token"])


@pytest.fixture
def pc_token(identity_server: RunningServer, identity: IdentitySimulator, ca_bundle: str) -> str:
    return delegated_token(identity_server.url, "https://api.partner.microsoft.com/.default", ca_bundle)


@pytest.fixture
def webhook_api_token(identity_server: RunningServer, identity: IdentitySimulator, ca_bundle: str) -> str:
    return delegated_token(identity_server.url, "https://api.partnercenter.microsoft.com/.default", ca_bundle)
