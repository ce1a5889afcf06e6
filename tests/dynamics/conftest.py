"""Fixtures for the Dynamics tests: the sandbox identity provider and a Dataverse simulator on free ports."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sandbox import credentials
from sandbox.dataverse import API, DataverseSimulator, dataverse_factory
from sandbox.identity import identity_factory
from sandbox.server import RunningServer, serve
from sandbox.tls import ensure_ca
from shared.http import tls_context


@pytest.fixture(scope="session")
def ca_bundle() -> str:
    return str(ensure_ca().cert_path)


@pytest.fixture(scope="session")
def identity_server() -> Iterator[RunningServer]:
    server = serve(identity_factory(), port=0)
    try:
        yield server
    finally:
        server.stop()


def _serve_dataverse(provisioned: bool) -> Iterator[RunningServer]:
    server = serve(dataverse_factory(provisioned=provisioned), port=0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dataverse_server() -> Iterator[RunningServer]:
    """A fresh, provisioned org (the connector's schema installed) per test."""
    yield from _serve_dataverse(True)


@pytest.fixture
def bare_dataverse_server() -> Iterator[RunningServer]:
    """A fresh org without the connector's schema, for provisioning tests."""
    yield from _serve_dataverse(False)


@pytest.fixture
def dataverse(dataverse_server: RunningServer) -> DataverseSimulator:
    simulator = dataverse_server.simulator
    assert isinstance(simulator, DataverseSimulator)
    return simulator


def client_credentials_token(identity_url: str, resource: str, ca_bundle: str) -> str:
    response = httpx.post(
        f"{identity_url}/{credentials.TENANT_ID}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": credentials.DATAVERSE_CLIENT_ID,
            "client_secret": credentials.DATAVERSE_CLIENT_SECRET,
            "scope": f"{resource}/.default",
        },
        verify=tls_context(ca_bundle),
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


@pytest.fixture
def web_api(identity_server: RunningServer, dataverse_server: RunningServer, ca_bundle: str) -> Iterator[httpx.Client]:
    """A plain httpx client on the Web API root with a valid bearer token (not our adapter)."""
    token = client_credentials_token(identity_server.url, dataverse_server.url, ca_bundle)
    with httpx.Client(
        base_url=f"{dataverse_server.url}{API}/",
        verify=tls_context(ca_bundle),
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
        },
        timeout=10,
    ) as client:
        yield client
