"""The Salesforce simulator as jsforce (npm, a client nobody here wrote) sees it.

Each row: a case of tests/conformance/jsforce_cases.cjs (run by node with jsforce's own code) and
the Salesforce documentation page of the behaviour it relies on. One node process runs them all
against a fresh simulator; a failure names the page and what jsforce got.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import jwt
import pytest

from sandbox import credentials
from sandbox.salesforce import SalesforceSimulator, jwt_signing_key_path
from sandbox.server import RunningServer, serve
from tests.conformance.node_cases import Outcome, run_node_cases

DOCS = "https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/"
CASES: dict[str, str] = {
    "login: SOAP username + password + security token": "https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_calls_login.htm",
    "login: OAuth 2.0 username-password flow": "https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_username_password_flow.htm",
    "login: OAuth 2.0 client credentials flow": "https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_client_credentials_flow.htm",
    "login: OAuth 2.0 JWT bearer flow": "https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_jwt_flow.htm",
    "login: a wrong password is refused": "https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_flow_errors.htm",
    "identity URL": "https://help.salesforce.com/s/articleView?id=sf.remoteaccess_using_openid.htm",
    "describe global and describe sObject": DOCS + "resources_sobject_describe.htm",
    "CRUD: create, retrieve, update, delete": DOCS + "resources_sobject_retrieve.htm",
    "SOQL: find() escapes quotes": "https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_soql_select_quotedstringescapes.htm",
    "query paging: nextRecordsUrl and queryMore": DOCS + "resources_query.htm",
    "upsert by external id: insert, then update": DOCS + "dome_upsert.htm",
    "sObject Collections: create, update, retrieve, delete": DOCS + "resources_composite_sobjects_collections.htm",
    "sObject Collections: retrieve by GET": DOCS + "resources_composite_sobjects_collections_retrieve.htm",
    "sObject Collections: allOrNone rolls every record back": DOCS
    + "resources_composite_sobjects_collections_create.htm",
    "composite: references between subrequests and allOrNone": DOCS + "resources_composite_composite.htm",
    "get updated and get deleted": DOCS + "resources_getupdated.htm",
    "errors: unknown field, unknown object, malformed SOQL, missing record": DOCS + "errorcodes.htm",
    "errors: an unknown SOQL function is refused": "https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_soql_select_functions.htm",
}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = serve(lambda url: SalesforceSimulator(url))
    yield running
    running.stop()
    assert running.errors == []


def _assertion(audience: str) -> str:
    now = int(time.time())
    claims = {"iss": credentials.SALESFORCE_CLIENT_ID, "sub": credentials.SALESFORCE_USERNAME, "aud": audience}
    return jwt.encode({**claims, "exp": now + 300}, jwt_signing_key_path().read_text(), algorithm="RS256")


@pytest.fixture(scope="module")
def results(server: RunningServer) -> dict[str, Outcome]:
    environment = {
        "SF_URL": server.url,
        "SF_USERNAME": credentials.SALESFORCE_USERNAME,
        "SF_PASSWORD": credentials.SALESFORCE_PASSWORD,
        "SF_TOKEN": credentials.SALESFORCE_SECURITY_TOKEN,
        "SF_CLIENT_ID": credentials.SALESFORCE_CLIENT_ID,
        "SF_CLIENT_SECRET": credentials.SALESFORCE_CLIENT_SECRET,
        "SF_JWT": _assertion(server.url),
    }
    return run_node_cases("jsforce_cases.cjs", list(CASES), environment)


@pytest.mark.parametrize("case", list(CASES))
def test_jsforce(results: dict[str, Outcome], case: str) -> None:
    outcome = results[case]
    assert outcome["ok"], f"{case} (documented at {CASES[case]}): jsforce got {outcome['detail']}"
