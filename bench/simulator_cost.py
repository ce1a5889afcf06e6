"""Simulator CPU per request: `python -m bench.simulator_cost [--requests N]`.

The simulators run in a child process (all four, as `make run` starts them, on free loopback
ports); this process sends the common calls of a sync over keep-alive HTTPS connections and reads
the child's CPU time (user + system, from /proc) before and after each batch. The figure per call
is everything the simulator side spends on one request: TLS, HTTP parsing, routing and the handler.
Target (issue 14): at most 5 ms per request, so that sync benchmarks measure the app.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from sandbox import credentials

TARGET_MS = 5.0


def _serve() -> None:
    """Child process: start every simulator, print where they are and the tokens to use, wait for stdin EOF."""
    from sandbox.identity import IdentitySimulator
    from sandbox.partner_center import REFERRALS_AUDIENCE
    from sandbox.simulators import start_all
    from sandbox.tls import ensure_ca

    services = start_all()
    identity = services.identity.simulator
    assert isinstance(identity, IdentitySimulator)
    pc_token, _ = identity._access_token(
        tenant=credentials.TENANT_ID,
        client_id=credentials.PC_CLIENT_ID,
        resource=REFERRALS_AUDIENCE,
        user=credentials.PC_ADMIN_USER,
    )
    dataverse_token, _ = identity._access_token(
        tenant=credentials.TENANT_ID,
        client_id=credentials.DATAVERSE_CLIENT_ID,
        resource=services.dataverse.url,
        user=None,
    )
    print(
        json.dumps(
            {
                "salesforce": services.salesforce.url,
                "dataverse": services.dataverse.url,
                "partner_center": services.partner_center.url,
                "pc_token": pc_token,
                "dataverse_token": dataverse_token,
                "ca": str(ensure_ca().cert_path),
            }
        ),
        flush=True,
    )
    sys.stdin.read()
    services.stop()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@dataclass
class Figure:
    call: str
    requests: int
    cpu_ms_per_request: float
    wall_ms_per_request: float


def _measure(pid: int, name: str, count: int, call: Callable[[int], None]) -> Figure:
    call(-1)  # warm-up: first connection, lazy imports
    cpu_before, wall_before = _cpu_seconds(pid), time.perf_counter()
    for index in range(count):
        call(index)
    cpu, wall = _cpu_seconds(pid) - cpu_before, time.perf_counter() - wall_before
    return Figure(name, count, cpu * 1000 / count, wall * 1000 / count)


def _check(response: requests.Response, *expected: int) -> requests.Response:
    if response.status_code not in expected:
        raise RuntimeError(f"{response.request.method} {response.url}: {response.status_code} {response.text[:300]}")
    return response


def run(count: int) -> list[Figure]:
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.simulator_cost", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        info: dict[str, Any] = json.loads(child.stdout.readline())
        return _scenarios(child.pid, info, count)
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def _scenarios(pid: int, info: dict[str, Any], count: int) -> list[Figure]:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the sandbox CA (and proxies never apply to loopback)
    session.verify = info["ca"]
    calls = [*_salesforce_calls(session, info), *_dataverse_calls(session, info), *_partner_center_calls(session, info)]
    return [_measure(pid, name, count, call) for name, call in calls]


Call = tuple[str, Callable[[int], None]]


def _salesforce_calls(session: requests.Session, info: dict[str, Any]) -> list[Call]:
    sf = info["salesforce"]
    token = _check(
        session.post(
            f"{sf}/services/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": credentials.SALESFORCE_CLIENT_ID,
                "client_secret": credentials.SALESFORCE_CLIENT_SECRET,
            },
        ),
        200,
    ).json()["access_token"]
    sf_headers = {"Authorization": f"Bearer {token}"}
    api = f"{sf}/services/data/v62.0"
    account = _check(session.post(f"{api}/sobjects/Account", json={"Name": "Bench"}, headers=sf_headers), 201)
    account_id = account.json()["id"]
    opportunity = {
        "Name": "Bench deal",
        "AccountId": account_id,
        "StageName": "Qualification",
        "CloseDate": "2030-01-01",
    }
    opportunity_id = _check(
        session.post(f"{api}/sobjects/Opportunity", json=opportunity, headers=sf_headers), 201
    ).json()["id"]
    soql = f"SELECT Id, Name, StageName, Amount FROM Opportunity WHERE Id = '{opportunity_id}'"

    def sf_query(_: int) -> None:
        _check(session.get(f"{api}/query", params={"q": soql}, headers=sf_headers), 200)

    def sf_get(_: int) -> None:
        _check(session.get(f"{api}/sobjects/Opportunity/{opportunity_id}", headers=sf_headers), 200)

    def sf_create(_: int) -> None:
        _check(session.post(f"{api}/sobjects/Opportunity", json=opportunity, headers=sf_headers), 201)

    def sf_update(index: int) -> None:
        body = {"Description": f"update {index}"}
        _check(session.patch(f"{api}/sobjects/Opportunity/{opportunity_id}", json=body, headers=sf_headers), 204)

    def sf_composite(index: int) -> None:
        body = {
            "allOrNone": True,
            "compositeRequest": [
                {
                    "method": "PATCH",
                    "url": f"/services/data/v62.0/sobjects/Opportunity/{opportunity_id}",
                    "referenceId": "update",
                    "body": {"Description": f"composite {index}"},
                },
                {
                    "method": "GET",
                    "url": f"/services/data/v62.0/sobjects/Opportunity/{opportunity_id}",
                    "referenceId": "read",
                },
            ],
        }
        _check(session.post(f"{api}/composite", json=body, headers=sf_headers), 200)

    def sf_get_new_connection(_: int) -> None:
        with requests.Session() as fresh:
            fresh.trust_env = False
            fresh.verify = info["ca"]
            _check(fresh.get(f"{api}/sobjects/Opportunity/{opportunity_id}", headers=sf_headers), 200)

    return [
        ("salesforce query", sf_query),
        ("salesforce get", sf_get),
        ("salesforce create", sf_create),
        ("salesforce update", sf_update),
        ("salesforce composite (2 subrequests)", sf_composite),
        ("salesforce get, new TLS connection each", sf_get_new_connection),
    ]


def _dataverse_calls(session: requests.Session, info: dict[str, Any]) -> list[Call]:
    dv = f"{info['dataverse']}/api/data/v9.2"
    dv_headers = {"Authorization": f"Bearer {info['dataverse_token']}", "Accept": "application/json"}
    created = _check(session.post(f"{dv}/accounts", json={"name": "Bench"}, headers=dv_headers), 204)
    dv_account = created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")

    def dv_query(_: int) -> None:
        params = {"$select": "name,accountid", "$filter": f"accountid eq {dv_account}"}
        _check(session.get(f"{dv}/accounts", params=params, headers=dv_headers), 200)

    def dv_get(_: int) -> None:
        _check(session.get(f"{dv}/accounts({dv_account})", headers=dv_headers), 200)

    def dv_create(index: int) -> None:
        _check(session.post(f"{dv}/accounts", json={"name": f"Bench {index}"}, headers=dv_headers), 204)

    def dv_update(index: int) -> None:
        _check(session.patch(f"{dv}/accounts({dv_account})", json={"name": f"Bench {index}"}, headers=dv_headers), 204)

    return [
        ("dataverse query", dv_query),
        ("dataverse get", dv_get),
        ("dataverse create", dv_create),
        ("dataverse update", dv_update),
    ]


def _partner_center_calls(session: requests.Session, info: dict[str, Any]) -> list[Call]:
    pc = f"{info['partner_center']}/v1.0/engagements/referrals"
    pc_headers = {"Authorization": f"Bearer {info['pc_token']}"}
    referral = _check(
        session.post(
            pc,
            json={
                "name": "Bench referral",
                "type": "Independent",
                "customerProfile": {
                    "name": "Bench customer",
                    "address": {"country": "US"},
                    "team": [{"firstName": "A", "lastName": "B", "email": "a@example.com"}],
                },
                "externalReferenceId": str(uuid.uuid4()),
            },
            headers=pc_headers,
        ),
        200,
        201,
    ).json()
    referral_url = f"{pc}/{referral['id']}"

    def pc_get(_: int) -> None:
        _check(session.get(referral_url, headers=pc_headers), 200)

    def pc_patch(index: int) -> None:
        operations = [{"op": "replace", "path": "/name", "value": f"Bench referral {index}"}]
        _check(session.patch(referral_url, json=operations, headers=pc_headers), 200, 204)

    return [("partner center referral GET", pc_get), ("partner center referral PATCH", pc_patch)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulator_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per call (default 200)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.serve:
        _serve()
        return 0
    figures = run(arguments.requests)
    print(f"{'call':40} {'requests':>8} {'sim CPU ms/req':>15} {'wall ms/req':>12}")
    for figure in figures:
        print(
            f"{figure.call:40} {figure.requests:>8} {figure.cpu_ms_per_request:>15.2f} {figure.wall_ms_per_request:>12.2f}"
        )
    worst = max(figure.cpu_ms_per_request for figure in figures)
    mean = sum(figure.cpu_ms_per_request for figure in figures) / len(figures)
    print(f"mean {mean:.2f} ms, worst {worst:.2f} ms of simulator CPU per request (target <= {TARGET_MS:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
