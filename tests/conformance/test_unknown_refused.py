"""Unknown means refused: every route of every simulator, asked with one query option it does not
implement, answers its service's 400 naming the option, never a 200 that ignored it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from sandbox.server import RunningServer, Simulator
from sandbox.simulators import SandboxServices, start_all
from sandbox.tls import ensure_ca
from shared.http import tls_context

UNKNOWN = "sandboxUnknownOption"


@pytest.fixture(scope="module")
def services() -> Iterator[SandboxServices]:
    running = start_all()
    yield running
    running.stop()


def _concrete(pattern: str) -> str:
    """A path the route matches: `{name}` -> a sample segment, `{rest:path}` -> two segments."""
    path = re.sub(r"\\([()$.])", r"\1", pattern)
    path = re.sub(r"\{\w+:path\}", "a/b", path)
    path = path.replace("v{version}", "v62.0")
    return re.sub(r"\{\w+\}", "x1", path)


def _routes(simulator: Simulator) -> list[tuple[str, str]]:
    return sorted(
        (method, pattern)
        for (method, _), (pattern, _, _) in simulator._handlers.items()
        if not pattern.startswith("/_sandbox/")
    )


def _every_route(services: SandboxServices) -> list[tuple[RunningServer, str, str]]:
    return [(server, method, pattern) for server in services.all() for method, pattern in _routes(server.simulator)]


def test_every_route_refuses_an_unknown_query_option(services: SandboxServices) -> None:
    walked = _every_route(services)
    assert len(walked) > 60  # every simulator's routes, not a sample
    failures = []
    with httpx.Client(verify=tls_context(str(ensure_ca().cert_path)), timeout=10) as client:
        for server, method, pattern in walked:
            response = client.request(method, server.url + _concrete(pattern), params={UNKNOWN: "1"})
            if response.status_code != 400 or UNKNOWN not in response.text:
                failures.append(
                    f"{server.simulator.name} {method} {pattern}: {response.status_code} {response.text[:120]}"
                )
    assert failures == []


def test_the_options_a_route_implements_still_work(services: SandboxServices) -> None:
    """The refusal is per option: the same query with only known options is not refused for them."""
    server = services.dataverse
    with httpx.Client(verify=tls_context(str(ensure_ca().cert_path)), timeout=10) as client:
        known = client.get(f"{server.url}/api/data/v9.2/accounts", params={"$select": "name", "$top": "1"})
        unknown = client.get(f"{server.url}/api/data/v9.2/accounts", params={"$select": "name", "fetchXml": "<fetch/>"})
    assert known.status_code == 401  # reaches the handler, which asks for a token
    assert unknown.status_code == 400 and "fetchXml" in unknown.text
