"""Fixtures for the Partner Center tests: the sandbox identity provider and Partner Center simulator on free ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox.identity import IdentitySimulator, identity_factory
from sandbox.server import RunningServer, serve
from sandbox.tls import ensure_ca


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
