"""The simulators' HTTP layer behaves as RFC 9112 / RFC 9110 say, proven on the wire (no client library).

Every simulator and the local Functions host share `sandbox.server.HttpServer`; the Salesforce
simulator stands in for all of them here (tests/e2e/test_local_host.py proves the host's side).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest

from sandbox import credentials
from sandbox.salesforce import SalesforceSimulator
from sandbox.server import RunningServer, serve
from tests.conformance.http_wire import WireConnection, chunked

TOKEN_FORM = urlencode(
    {
        "grant_type": "client_credentials",
        "client_id": credentials.SALESFORCE_CLIENT_ID,
        "client_secret": credentials.SALESFORCE_CLIENT_SECRET,
    }
).encode()
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = serve(lambda url: SalesforceSimulator(url))
    yield running
    running.stop()
    assert running.errors == []


@pytest.fixture
def wire(server: RunningServer) -> Iterator[WireConnection]:
    connection = WireConnection(server.url)
    yield connection
    connection.close()


def test_a_chunked_request_body_is_read(wire: WireConnection) -> None:
    """RFC 9112 7.1: a server must accept the chunked coding (jsforce sends its login form so)."""
    wire.send("POST", "/services/oauth2/token", {**FORM, "Transfer-Encoding": "chunked"}, chunked(TOKEN_FORM))
    response = wire.read_response()
    assert response.status == 200, response.body
    assert json.loads(response.body)["access_token"]


def test_a_connection_is_kept_alive_across_requests(wire: WireConnection) -> None:
    """RFC 9112 9.3: HTTP/1.1 connections persist unless one side says `Connection: close`."""
    for _ in range(3):
        wire.send("GET", "/services/data")
        response = wire.read_response()
        assert response.status == 200
        assert response.headers.get("connection", "").lower() != "close"


def test_expect_100_continue_gets_an_interim_answer_before_the_body(wire: WireConnection) -> None:
    """RFC 9110 10.1.1: the client waits for 100 Continue before it sends the body."""
    headers = {**FORM, "Content-Length": str(len(TOKEN_FORM)), "Expect": "100-continue"}
    wire.send("POST", "/services/oauth2/token", headers)
    assert wire.read_response().status == 100
    wire.sock.sendall(TOKEN_FORM)
    final = wire.read_response()
    assert final.status == 200 and json.loads(final.body)["access_token"]


def test_head_answers_the_get_headers_without_a_body(wire: WireConnection) -> None:
    """RFC 9110 9.3.2: HEAD is GET without content; the next answer on the connection proves no body bytes followed."""
    wire.send("GET", "/services/data")
    got = wire.read_response()
    wire.send("HEAD", "/services/data")
    head = wire.read_response(head=True)
    wire.send("GET", "/services/data")
    after = wire.read_response()
    assert head.status == 200
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.body))
    assert after.status == 200 and after.body == got.body


@pytest.mark.parametrize("target", ["/services/data", "/services/data/"])
def test_a_trailing_slash_is_optional(wire: WireConnection, target: str) -> None:
    wire.send("GET", target)
    assert wire.read_response().status == 200


def test_a_known_resource_asked_with_another_method_is_405_with_allow(wire: WireConnection) -> None:
    """RFC 9110 15.5.6: 405 names the methods the resource takes."""
    wire.send("DELETE", "/services/data")
    response = wire.read_response()
    assert response.status == 405
    assert {item.strip() for item in response.headers["allow"].split(",")} == {"GET", "HEAD"}


def test_a_client_stuck_in_its_tls_handshake_holds_up_no_one(server: RunningServer, wire: WireConnection) -> None:
    """The handshake runs on the connection's worker thread, not in the accept loop every connection shares."""
    silent = socket.create_connection(("127.0.0.1", server.port))  # TCP only: never sends a ClientHello
    try:
        fresh = WireConnection(server.url)
        fresh.send("GET", "/services/data")
        assert fresh.read_response().status == 200
        fresh.close()
    finally:
        silent.close()


def test_stopping_closes_idle_keep_alive_connections() -> None:
    running = serve(lambda url: SalesforceSimulator(url))
    wire = WireConnection(running.url)
    try:
        wire.send("GET", "/services/data")
        assert wire.read_response().status == 200
        running.stop()
        assert wire.closed_by_peer()
    finally:
        wire.close()
