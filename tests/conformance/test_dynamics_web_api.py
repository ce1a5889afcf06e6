"""The Dataverse simulator as dynamics-web-api (npm) sees it: conditional requests above all.

Each row: a case of tests/conformance/dynamics_web_api_cases.cjs and the Microsoft Learn page of
the behaviour it relies on; one node process runs them all against a fresh simulator.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox import credentials
from sandbox.dataverse import dataverse_factory
from sandbox.identity import IdentitySimulator, identity_factory
from sandbox.server import serve
from tests.conformance.node_cases import Outcome, run_node_cases

LEARN = "https://learn.microsoft.com/power-apps/developer/data-platform/webapi/"
CASES: dict[str, str] = {
    "create with return=representation carries the ETag": LEARN + "create-entity-web-api#create-with-data-returned",
    "If-Match with the current ETag updates; a stale one is 412": LEARN
    + "perform-conditional-operations-using-web-api#apply-optimistic-concurrency",
    "If-None-Match with the current ETag: not modified": LEARN
    + "perform-conditional-operations-using-web-api#conditional-retrievals",
    "upsert with If-None-Match: * never updates; with If-Match: * never creates": LEARN
    + "perform-conditional-operations-using-web-api#limit-upsert-operations",
    "upsert by alternate key": LEARN + "update-delete-entities-using-web-api#upsert-a-table-row",
    "delete with a stale ETag is 412": LEARN
    + "perform-conditional-operations-using-web-api#apply-optimistic-concurrency",
    "paging: maxPageSize and the next link": LEARN + "query/page-results",
    "attribute metadata through a type cast": LEARN + "query-metadata-web-api#retrieving-attributes",
    "an unknown query option is refused": LEARN + "query/overview",
}


@pytest.fixture(scope="module")
def results() -> Iterator[dict[str, Outcome]]:
    identity, dataverse = serve(identity_factory()), serve(dataverse_factory())
    try:
        simulator = identity.simulator
        assert isinstance(simulator, IdentitySimulator)
        token, _ = simulator._access_token(
            tenant=credentials.TENANT_ID, client_id=credentials.DATAVERSE_CLIENT_ID, resource=dataverse.url, user=None
        )
        yield run_node_cases("dynamics_web_api_cases.cjs", list(CASES), {"DV_URL": dataverse.url, "DV_TOKEN": token})
    finally:
        identity.stop()
        dataverse.stop()
    assert dataverse.errors == []


@pytest.mark.parametrize("case", list(CASES))
def test_dynamics_web_api(results: dict[str, Outcome], case: str) -> None:
    outcome = results[case]
    assert outcome["ok"], f"{case} (documented at {CASES[case]}): dynamics-web-api got {outcome['detail']}"
