"""simple-salesforce itself, used directly against the simulator, gets Salesforce's documented answers.

This is how we know the simulator is faithful (reference/crm-apis.md A1): the library's own login
code, status handling and exception mapping run unchanged. Login hosts are redirected to the
simulator with a transport adapter (see conftest.RedirectToSimulator).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from sandbox import credentials
from sandbox.salesforce import jwt_signing_key_path
from sandbox.server import Fault, RunningServer
from tests.salesforce.conftest import simulator, simulator_session

VERSION = "62.0"


@pytest.fixture
def sf(sf_server: RunningServer) -> Iterator[Any]:
    """Signed in with username + password + security token (the SOAP login), as simple-salesforce does it."""
    session = simulator_session(sf_server, "login.salesforce.com")
    yield Salesforce(
        username=credentials.SALESFORCE_USERNAME,
        password=credentials.SALESFORCE_PASSWORD,
        security_token=credentials.SALESFORCE_SECURITY_TOKEN,
        session=session,
        version=VERSION,
    )
    session.close()


def _error_code(error: Exception) -> str:
    content = getattr(error, "content", None)
    assert isinstance(content, list), content
    return str(content[0]["errorCode"])


def _opportunity(**extra: object) -> dict[str, object]:
    return {"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2026-12-31", **extra}


def test_create_get_update_delete(sf: Any) -> None:
    created = sf.Account.create({"Name": "Contoso"})
    assert created["success"] is True and created["errors"] == [] and len(created["id"]) == 18

    assert sf.Account.update(created["id"], {"BillingCity": "Redmond"}) == 204
    record = sf.Account.get(created["id"])
    assert record["attributes"]["type"] == "Account" and record["BillingCity"] == "Redmond"
    assert record["LastModifiedDate"].endswith("+0000") and record["SystemModstamp"]

    assert sf.Account.delete(created["id"]) == 204
    with pytest.raises(SalesforceResourceNotFound) as deleted:
        sf.Account.get(created["id"])
    assert _error_code(deleted.value) == "ENTITY_IS_DELETED"


def test_upsert_by_external_id_create_update_and_ambiguous(sf: Any, sf_server: RunningServer) -> None:
    assert sf.Opportunity.upsert("PCS_Referral_Id__c/R-1", _opportunity()) == 201
    response = sf.Opportunity.upsert("PCS_Referral_Id__c/R-1", {"Amount": 10}, raw_response=True)
    assert response.status_code == 200 and response.json()["created"] is False
    assert sf.Opportunity.get_by_custom_id("PCS_Referral_Id__c", "R-1")["Amount"] == 10.0

    old: Any = Salesforce(session_id=sf.session_id, instance=sf.sf_instance, version="45.0", session=sf.session)
    assert old.Opportunity.upsert("PCS_Referral_Id__c/R-1", {"Amount": 11}) == 204  # before v46: no body

    sim = simulator(sf_server)
    with sim.lock:  # a non-unique external id (e.g. data loaded before the field was made unique)
        for record in list(sim.records["Opportunity"].values()):
            copy = {key: value for key, value in record.items()}
            copy["Id"] = sim.ids.new("006")
            sim.records["Opportunity"][copy["Id"]] = copy
    with pytest.raises(SalesforceMoreThanOneRecord) as ambiguous:
        sf.Opportunity.upsert("PCS_Referral_Id__c/R-1", {"Amount": 12})
    assert ambiguous.value.status == 300 and len(ambiguous.value.content) == 2


def test_stage_decides_is_closed_and_is_won(sf: Any) -> None:
    created = sf.Opportunity.create(_opportunity())
    sf.Opportunity.update(created["id"], {"StageName": "Closed Won"})
    record = sf.query(f"SELECT IsClosed, IsWon, Probability FROM Opportunity WHERE Id = '{created['id']}'")["records"][
        0
    ]
    assert (record["IsClosed"], record["IsWon"], record["Probability"]) == (True, True, 100.0)
    with pytest.raises(SalesforceMalformedRequest) as read_only:
        sf.Opportunity.update(created["id"], {"IsWon": False})
    assert _error_code(read_only.value) == "INVALID_FIELD_FOR_INSERT_UPDATE"


def test_query_paging_with_next_records_url(sf: Any, sf_server: RunningServer) -> None:
    simulator(sf_server).page_size = 3
    for index in range(7):
        sf.Account.create({"Name": f"Account {index:02d}"})
    first = sf.query("SELECT Id, Name FROM Account ORDER BY Name")
    assert (first["totalSize"], first["done"], len(first["records"])) == (7, False, 3)
    assert first["nextRecordsUrl"].startswith(f"/services/data/v{VERSION}/query/01g")
    names = [row["Name"] for row in sf.query_all_iter("SELECT Name FROM Account ORDER BY Name DESC")]
    assert names == [f"Account {index:02d}" for index in reversed(range(7))]
    assert sf.query("SELECT COUNT() FROM Account WHERE Name LIKE 'Account 0%'")["totalSize"] == 7


def test_query_default_page_is_2000_and_batch_size_header_is_honoured(sf: Any) -> None:
    records = [{"attributes": {"type": "Account"}, "Name": f"Bulk {index}"} for index in range(200)]
    for _ in range(11):
        sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": records})
    page = sf.query("SELECT Id FROM Account")
    assert (page["totalSize"], len(page["records"]), page["done"]) == (2200, 2000, False)
    small = sf.query("SELECT Id FROM Account", headers={"Sforce-Query-Options": "batchSize=200"})
    assert len(small["records"]) == 200


def test_relationship_fields_child_subqueries_and_filters(sf: Any) -> None:
    account = sf.Account.create({"Name": "O'Brien & Co \\ Ltd", "BillingPostalCode": "D02"})["id"]
    contact = sf.Contact.create({"LastName": "O'Brien", "Email": "ob@example.com", "AccountId": account})["id"]
    opportunity = sf.Opportunity.create(_opportunity(AccountId=account, Amount=500))["id"]
    sf.OpportunityContactRole.create({"OpportunityId": opportunity, "ContactId": contact, "IsPrimary": True})
    soql = (
        "SELECT Name, Account.Name, Owner.Name, (SELECT Contact.Email, IsPrimary FROM OpportunityContactRoles) "
        "FROM Opportunity WHERE Account.Name = 'O\\'Brien & Co \\\\ Ltd' AND (Amount >= 100 OR IsWon = true) "
        "AND NOT StageName IN ('Closed Lost') AND CloseDate > 2026-01-01 AND CreatedDate <= 2099-01-01T00:00:00Z "
        "ORDER BY Name DESC NULLS LAST LIMIT 5 OFFSET 0"
    )
    row = sf.query(soql)["records"][0]
    assert row["Account"]["Name"] == "O'Brien & Co \\ Ltd" and row["Owner"]["Name"] == "Integration User"
    roles = row["OpportunityContactRoles"]
    assert roles["totalSize"] == 1 and roles["records"][0]["Contact"]["Email"] == "ob@example.com"
    assert sf.query("SELECT Id FROM Account WHERE Name = 'O\\'Brien & Co Ltd'")["totalSize"] == 0


def test_composite_collections_report_each_item(sf: Any) -> None:
    records = [{"attributes": {"type": "Account"}, "Name": "Good"}, {"attributes": {"type": "Account"}, "Phone": "1"}]
    partial = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": records})
    assert partial is not None
    assert partial[0]["success"] is True
    assert partial[1]["success"] is False and partial[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert partial[1]["errors"][0]["fields"] == ["Name"]

    atomic = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": records})
    assert atomic is not None
    assert [item["success"] for item in atomic] == [False, False]
    assert atomic[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == 1  # only the first call's good record

    upserted = sf.restful(
        "composite/sobjects/Opportunity/PCS_Referral_Id__c",
        method="PATCH",
        json={
            "allOrNone": False,
            "records": [{"attributes": {"type": "Opportunity"}, "PCS_Referral_Id__c": "C-1", **_opportunity()}],
        },
    )
    assert upserted is not None and upserted[0]["created"] is True


def test_composite_with_references_and_a_failing_subrequest(sf: Any) -> None:
    base = f"/services/data/v{VERSION}/sobjects"
    body = {
        "allOrNone": True,
        "compositeRequest": [
            {"method": "POST", "url": f"{base}/Account", "referenceId": "acct", "body": {"Name": "Ref Co"}},
            {"method": "POST", "url": f"{base}/Contact", "referenceId": "ct", "body": {"AccountId": "@{acct.id}"}},
        ],
    }
    answer = sf.restful("composite", method="POST", json=body)
    assert answer is not None
    first, second = answer["compositeResponse"]
    assert second["httpStatusCode"] == 400 and second["body"][0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    assert first["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == 0
    body["compositeRequest"][1]["body"] = {"AccountId": "@{acct.id}", "LastName": "Ok"}  # type: ignore[index]
    answer = sf.restful("composite", method="POST", json=body)
    assert answer is not None and [item["httpStatusCode"] for item in answer["compositeResponse"]] == [201, 201]


@pytest.mark.parametrize(
    ("action", "code"),
    [
        (lambda sf: sf.query("SELECT FROM Account"), "MALFORMED_QUERY"),
        (lambda sf: sf.query("SELECT Id FROM Account GROUP BY Name"), "MALFORMED_QUERY"),
        (lambda sf: sf.query("SELECT Nope__c FROM Account"), "INVALID_FIELD"),
        (lambda sf: sf.query("SELECT Id FROM Account WHERE Name = 'bad \\q'"), "MALFORMED_QUERY"),
        (lambda sf: sf.query("SELECT Id FROM Opportunity WHERE SystemModstamp > '2024-01-01'"), "INVALID_FIELD"),
        (lambda sf: sf.Account.create({"Nope__c": 1, "Name": "x"}), "INVALID_FIELD"),
        (lambda sf: sf.Opportunity.create({"Name": "x"}), "REQUIRED_FIELD_MISSING"),
        (lambda sf: sf.Opportunity.create(_opportunity(StageName="Bogus")), "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
        (
            lambda sf: sf.Opportunity.create(_opportunity(PCS_Help_Needed__c="Pizza")),
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        ),
        (lambda sf: sf.Opportunity.create(_opportunity(Name="x" * 121)), "STRING_TOO_LONG"),
        (lambda sf: sf.Account.get("001000000000000AAA"), "NOT_FOUND"),
        (lambda sf: sf.Account.get("not-an-id"), "MALFORMED_ID"),
    ],
)
def test_errors_are_json_lists_with_error_codes(sf: Any, action: object, code: str) -> None:
    with pytest.raises((SalesforceMalformedRequest, SalesforceResourceNotFound)) as raised:
        action(sf)  # type: ignore[operator]
    assert _error_code(raised.value) == code


def test_duplicate_external_id_is_refused(sf: Any) -> None:
    sf.Opportunity.create(_opportunity(PCS_Referral_Id__c="DUP"))
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.Opportunity.create(_opportunity(PCS_Referral_Id__c="dup"))
    assert _error_code(raised.value) == "DUPLICATE_VALUE"


def test_invalid_session_id_and_library_relogin(sf: Any, sf_server: RunningServer) -> None:
    direct = Salesforce(session_id="00Dbogus!token", instance=sf.sf_instance, version=VERSION, session=sf.session)
    with pytest.raises(SalesforceExpiredSession) as expired:
        direct.query("SELECT Id FROM Account")
    assert _error_code(expired.value) == "INVALID_SESSION_ID"

    sf.session.post(f"{sf_server.url}/_sandbox/expire-sessions", timeout=5).raise_for_status()
    assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == 0  # simple-salesforce signed in again itself


def test_request_limit_exceeded_and_limit_info(sf: Any, sf_server: RunningServer) -> None:
    sf.query("SELECT Id FROM Account")
    usage = sf.api_usage["api-usage"]
    assert usage.used >= 1 and usage.total == 100_000
    sim = simulator(sf_server)
    sim.daily_api_limit = sim.api_usage + 1
    sf.query("SELECT Id FROM Account")
    with pytest.raises(SalesforceRefusedRequest) as refused:
        sf.query("SELECT Id FROM Account")
    assert refused.value.status == 403 and _error_code(refused.value) == "REQUEST_LIMIT_EXCEEDED"


def test_injected_faults_carry_salesforce_bodies(sf: Any, sf_server: RunningServer) -> None:
    simulator(sf_server).add_fault(Fault(path_prefix="/services/data", status=403, count=1))
    with pytest.raises(SalesforceRefusedRequest) as refused:
        sf.query("SELECT Id FROM Account")
    assert _error_code(refused.value) == "REQUEST_LIMIT_EXCEEDED"


def test_every_login_flow(sf_server: RunningServer) -> None:
    session = simulator_session(sf_server, "login.salesforce.com", "acme.my.salesforce.com")
    clients: list[Any] = [
        Salesforce(
            consumer_key=credentials.SALESFORCE_CLIENT_ID,
            consumer_secret=credentials.SALESFORCE_CLIENT_SECRET,
            domain="acme.my",
            session=session,
        ),
        Salesforce(
            username=credentials.SALESFORCE_USERNAME,
            password=credentials.SALESFORCE_PASSWORD + credentials.SALESFORCE_SECURITY_TOKEN,
            consumer_key=credentials.SALESFORCE_CLIENT_ID,
            consumer_secret=credentials.SALESFORCE_CLIENT_SECRET,
            session=session,
        ),
        Salesforce(
            username=credentials.SALESFORCE_USERNAME,
            consumer_key=credentials.SALESFORCE_CLIENT_ID,
            privatekey_file=str(jwt_signing_key_path()),
            session=session,
        ),
    ]
    for client in clients:
        assert client.sf_instance == sf_server.url.removeprefix("https://")
        assert client.query("SELECT COUNT() FROM User")["totalSize"] == 2
    with pytest.raises(SalesforceAuthenticationFailed) as soap_failure:
        Salesforce(username=credentials.SALESFORCE_USERNAME, password="wrong", security_token="x", session=session)
    assert soap_failure.value.code == "INVALID_LOGIN"
    with pytest.raises(SalesforceAuthenticationFailed) as token_failure:
        Salesforce(
            consumer_key=credentials.SALESFORCE_CLIENT_ID, consumer_secret="wrong", domain="acme.my", session=session
        )
    assert token_failure.value.code == "invalid_client"


def test_describe_shows_the_shipped_schema(sf: Any) -> None:
    fields = {item["name"]: item for item in sf.Opportunity.describe()["fields"]}
    assert fields["PCS_Referral_Id__c"]["externalId"] is True and fields["PCS_Referral_Id__c"]["unique"] is True
    assert fields["PCS_Sync_With_Partner_Center__c"]["type"] == "boolean"
    assert "CurrencyIsoCode" not in fields
    children = {item["relationshipName"] for item in sf.Opportunity.describe()["childRelationships"]}
    assert {"OpportunityContactRoles", "PCS_Solutions__r"} <= children
    assert any(item["name"] == "PCS_Solution__c" for item in sf.describe()["sobjects"])
