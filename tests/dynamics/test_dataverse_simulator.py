"""Plain httpx requests (not our adapter) against the Dataverse simulator: the documented wire contract.

Status codes, headers and bodies as crm-apis.md part B describes them.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx

from sandbox.dataverse import API, DataverseSimulator
from sandbox.dataverse_batch import parse_batch_response
from sandbox.server import Fault, RunningServer
from shared.http import tls_context
from tests.dynamics.conftest import client_credentials_token

GUID = re.compile(r"\(([0-9a-f-]{36})\)$")


def create(web_api: httpx.Client, entity_set: str, body: dict[str, Any]) -> str:
    response = web_api.post(entity_set, json=body)
    assert response.status_code == 204, response.text
    found = GUID.search(response.headers["OData-EntityId"])
    assert found
    return found.group(1)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    return dict(body["error"])


def test_create_answers_204_with_the_entity_id_or_201_with_a_representation(web_api: httpx.Client) -> None:
    plain = web_api.post("accounts", json={"name": "Plain"})
    assert plain.status_code == 204 and plain.content == b""
    assert re.fullmatch(rf".*{API}/accounts\([0-9a-f-]{{36}}\)", plain.headers["OData-EntityId"])

    represented = web_api.post(
        "accounts?$select=name", json={"name": "Represented"}, headers={"Prefer": "return=representation"}
    )
    assert represented.status_code == 201
    body = represented.json()
    assert body["name"] == "Represented" and re.fullmatch(r'W/"\d+"', body["@odata.etag"])
    assert "OData-EntityId" not in represented.headers
    assert represented.headers["Preference-Applied"] == "return=representation"


def test_retrieve_and_not_found(web_api: httpx.Client) -> None:
    account_id = create(web_api, "accounts", {"name": "Seen"})
    found = web_api.get(f"accounts({account_id})?$select=name")
    assert found.status_code == 200
    assert found.json()["name"] == "Seen" and found.json()["accountid"] == account_id
    assert set(found.json()) == {"@odata.context", "@odata.etag", "name", "accountid"}

    missing = str(uuid.uuid4())
    response = web_api.get(f"accounts({missing})")
    assert response.status_code == 404
    assert error_of(response) == {"code": "0x80040217", "message": f"account With Id = {missing} Does Not Exist"}


def test_patch_with_if_match_star_on_a_missing_record_is_404_and_creates_nothing(
    web_api: httpx.Client, dataverse: DataverseSimulator
) -> None:
    missing = str(uuid.uuid4())
    response = web_api.patch(f"accounts({missing})", json={"name": "Ghost"}, headers={"If-Match": "*"})
    assert response.status_code == 404
    assert error_of(response)["message"] == f"account With Id = {missing} Does Not Exist"
    assert dataverse.records["account"] == {}

    upsert = web_api.patch(f"accounts({missing})", json={"name": "Created by upsert"})
    assert upsert.status_code == 204
    assert dataverse.records["account"][missing]["name"] == "Created by upsert"


def test_etags_if_none_match_and_stale_versions(web_api: httpx.Client) -> None:
    account_id = create(web_api, "accounts", {"name": "Versioned"})
    etag = web_api.get(f"accounts({account_id})?$select=name").json()["@odata.etag"]
    assert web_api.patch(f"accounts({account_id})", json={"name": "v2"}, headers={"If-Match": etag}).status_code == 204

    stale = web_api.patch(f"accounts({account_id})", json={"name": "v3"}, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert (
        error_of(stale)["message"]
        == "The version of the existing record doesn't match the RowVersion property provided."
    )

    exists = web_api.patch(f"accounts({account_id})", json={"name": "again"}, headers={"If-None-Match": "*"})
    assert exists.status_code == 412
    assert error_of(exists)["message"] == "A record with matching key values already exists."

    fresh = web_api.get(f"accounts({account_id})?$select=name").json()["@odata.etag"]
    assert web_api.get(f"accounts({account_id})?$select=name", headers={"If-None-Match": fresh}).status_code == 304


def test_alternate_key_upsert_201_then_200_and_duplicates_refused(web_api: httpx.Client) -> None:
    url = "opportunities(pcs_referralid='R-''1')?$select=opportunityid,pcs_referralid"
    prefer = {"Prefer": "return=representation"}
    created = web_api.patch(url, json={"name": "By key"}, headers=prefer)
    updated = web_api.patch(url, json={"name": "By key again"}, headers=prefer)
    assert (created.status_code, updated.status_code) == (201, 200)
    assert created.json()["pcs_referralid"] == "R-'1"
    assert created.json()["opportunityid"] == updated.json()["opportunityid"]
    plain = web_api.patch("opportunities(pcs_referralid='R-2')", json={"name": "204"})
    assert plain.status_code == 204 and plain.headers["OData-EntityId"].endswith("opportunities(pcs_referralid='R-2')")

    duplicate = web_api.post("opportunities", json={"name": "Dup", "pcs_referralid": "R-'1"})
    assert duplicate.status_code == 412
    assert error_of(duplicate)["code"] == "0x80040237"

    unknown_key = web_api.patch("opportunities(name='x')", json={"description": "?"})
    assert unknown_key.status_code == 400


def test_unknown_properties_and_bad_binds_are_400(web_api: httpx.Client) -> None:
    unknown = web_api.post("accounts", json={"name": "x", "nosuchcolumn": 1})
    assert unknown.status_code == 400
    assert error_of(unknown) == {
        "code": "0x80060888",
        "message": "The property 'nosuchcolumn' does not exist on type 'Microsoft.Dynamics.CRM.account'. "
        "Make sure to only use property names that are defined by the type.",
    }
    raw_lookup = web_api.post("accounts", json={"name": "x", "parentaccountid": str(uuid.uuid4())})
    assert raw_lookup.status_code == 400
    missing_target = web_api.post(
        "contacts", json={"lastname": "x", "parentcustomerid_account@odata.bind": f"/accounts({uuid.uuid4()})"}
    )
    assert missing_target.status_code == 404 and error_of(missing_target)["code"] == "0x80040217"
    too_long = web_api.post("accounts", json={"name": "x" * 161})
    assert too_long.status_code == 400 and "maximum allowed length of '160'" in error_of(too_long)["message"]


def test_odata_bind_sets_lookups_and_expand_follows_them(web_api: httpx.Client) -> None:
    account_id = create(web_api, "accounts", {"name": "Parent"})
    for name in ("a", "b"):
        create(
            web_api, "contacts", {"lastname": name, "parentcustomerid_account@odata.bind": f"/accounts({account_id})"}
        )
    opportunity_id = create(
        web_api, "opportunities", {"name": "Deal", "parentaccountid@odata.bind": f"/accounts({account_id})"}
    )
    opportunity = web_api.get(
        f"opportunities({opportunity_id})?$select=name,_parentaccountid_value&$expand=parentaccountid($select=name)"
    ).json()
    assert opportunity["_parentaccountid_value"] == account_id
    assert opportunity["parentaccountid"]["name"] == "Parent"
    account = web_api.get(
        f"accounts({account_id})?$select=name&$expand=contact_customer_accounts($select=lastname;$orderby=lastname desc)"
    ).json()
    assert [contact["lastname"] for contact in account["contact_customer_accounts"]] == ["b", "a"]


def test_filter_operators_escaping_and_literals(web_api: httpx.Client) -> None:
    first = create(web_api, "accounts", {"name": "O'Brien & Co", "address1_postalcode": "D02", "numberofemployees": 10})
    create(web_api, "accounts", {"name": "Contoso", "numberofemployees": 500})
    create(web_api, "accounts", {"name": "Fabrikam"})

    def names(expression: str) -> list[str]:
        response = web_api.get("accounts", params={"$select": "name", "$filter": expression, "$orderby": "name"})
        assert response.status_code == 200, response.text
        return [row["name"] for row in response.json()["value"]]

    assert names("name eq 'O''Brien & Co'") == ["O'Brien & Co"]
    assert names("name eq 'o''brien & co'") == ["O'Brien & Co"]  # case-insensitive, like SQL collation
    assert names("name ne 'Contoso' and address1_postalcode eq null") == ["Fabrikam"]
    assert names("numberofemployees gt 10 or startswith(name,'fab')") == ["Contoso", "Fabrikam"]
    assert names("numberofemployees ge 10 and numberofemployees le 500") == ["Contoso", "O'Brien & Co"]
    assert names("not contains(name,'o') and numberofemployees lt 1000") == []
    assert names(f"accountid eq {first}") == ["O'Brien & Co"]
    assert names("modifiedon ge 2000-01-01T00:00:00Z") == ["Contoso", "Fabrikam", "O'Brien & Co"]
    assert names("name eq 'x'' or name ne ''y'") == []  # a quote in the value cannot inject

    bad = web_api.get("accounts", params={"$filter": "nosuch eq 1"})
    assert bad.status_code == 400
    assert (
        error_of(bad)["message"] == "Could not find a property named 'nosuch' on type 'Microsoft.Dynamics.CRM.account'."
    )
    assert web_api.get("accounts", params={"$filter": "name eq 'unterminated"}).status_code == 400


def test_paging_with_maxpagesize_next_links_and_count(web_api: httpx.Client) -> None:
    for n in range(5):
        create(web_api, "accounts", {"name": f"Account {n}"})
    headers = {"Prefer": "odata.maxpagesize=2"}
    page = web_api.get("accounts?$select=name&$orderby=name&$count=true&$top=1", headers=headers)
    assert page.headers["Preference-Applied"] == "odata.maxpagesize=2"
    body = page.json()
    assert body["@odata.count"] == 5
    names = [row["name"] for row in body["value"]]  # $top is ignored when a page size is set
    while "@odata.nextLink" in body:
        body = web_api.get(body["@odata.nextLink"], headers=headers).json()
        names += [row["name"] for row in body["value"]]
    assert names == [f"Account {n}" for n in range(5)]
    assert [row["name"] for row in web_api.get("accounts?$select=name&$orderby=name desc&$top=2").json()["value"]] == [
        "Account 4",
        "Account 3",
    ]


def test_win_and_lose_opportunity_actions(web_api: httpx.Client, dataverse: DataverseSimulator) -> None:
    won = create(web_api, "opportunities", {"name": "Win", "estimatedvalue": 100})
    lost = create(web_api, "opportunities", {"name": "Lose"})
    response = web_api.post(
        "WinOpportunity",
        json={
            "Status": 3,
            "OpportunityClose": {"subject": "Won", "opportunityid@odata.bind": f"/opportunities({won})"},
        },
    )
    assert response.status_code == 204
    bad_status = web_api.post(
        "LoseOpportunity",
        json={
            "Status": 3,
            "OpportunityClose": {"subject": "Lost", "opportunityid@odata.bind": f"/opportunities({lost})"},
        },
    )
    assert bad_status.status_code == 400
    assert (
        web_api.post(
            "LoseOpportunity",
            json={
                "Status": 5,
                "OpportunityClose": {"subject": "Lost", "opportunityid@odata.bind": f"/opportunities({lost})"},
            },
        ).status_code
        == 204
    )
    rows = dataverse.records["opportunity"]
    assert (rows[won]["statecode"], rows[won]["statuscode"], rows[won]["actualvalue"]) == (1, 3, 100)
    assert (rows[lost]["statecode"], rows[lost]["statuscode"]) == (2, 5)
    assert len(dataverse.records["opportunityclose"]) == 2
    refused = web_api.patch(f"opportunities({won})", json={"statecode": 2, "statuscode": 4}, headers={"If-Match": "*"})
    assert refused.status_code == 400  # closing goes through the actions


def _batch_body(boundary: str, parts: list[str]) -> bytes:
    return ("".join(f"--{boundary}\r\n{part}\r\n" for part in parts) + f"--{boundary}--\r\n").encode()


def _http_part(method: str, url: str, body: str | None = None, content_id: int | None = None) -> str:
    head = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if content_id is not None:
        head += f"Content-ID: {content_id}\r\n"
    request = f"{method} {url} HTTP/1.1\r\n"
    if body is not None:
        request += f"Content-Type: application/json; type=entry\r\n\r\n{body}"
    else:
        request += "\r\n"
    return f"{head}\r\n{request}"


def test_batch_change_sets_are_atomic_and_reference_content_ids(
    web_api: httpx.Client, dataverse_server: RunningServer, dataverse: DataverseSimulator
) -> None:
    root = f"{dataverse_server.url}{API}/"
    change_set = _batch_body(
        "changeset_1",
        [
            _http_part("POST", f"{root}accounts", '{"name": "In change set"}', 1),
            _http_part("POST", f"{root}contacts", '{"lastname": "C", "parentcustomerid_account@odata.bind": "$1"}', 2),
        ],
    ).decode()
    body = _batch_body(
        "batch_1",
        [
            f"Content-Type: multipart/mixed; boundary=changeset_1\r\n\r\n{change_set}",
            _http_part("GET", f"{API}/accounts?$select=name"),
        ],
    )
    response = web_api.post("$batch", content=body, headers={"Content-Type": "multipart/mixed; boundary=batch_1"})
    assert response.status_code == 200
    parts = parse_batch_response(response.headers["content-type"], response.content)
    assert [part.status for part in parts] == [204, 204, 200]
    contact = next(iter(dataverse.records["contact"].values()))
    assert contact["parentcustomerid"] == next(iter(dataverse.records["account"]))

    failing = _batch_body(
        "changeset_2",
        [
            _http_part("POST", f"{root}accounts", '{"name": "Rolled back"}', 1),
            _http_part("POST", f"{root}accounts", '{"nosuch": 1}', 2),
        ],
    ).decode()
    rolled_back = web_api.post(
        "$batch",
        content=_batch_body("batch_2", [f"Content-Type: multipart/mixed; boundary=changeset_2\r\n\r\n{failing}"]),
        headers={"Content-Type": "multipart/mixed; boundary=batch_2"},
    )
    assert rolled_back.status_code == 400
    assert [row["name"] for row in dataverse.records["account"].values()] == ["In change set"]

    independent = _batch_body(
        "batch_3",
        [
            _http_part("POST", f"{root}accounts", '{"nosuch": 1}'),
            _http_part("POST", f"{root}accounts", '{"name": "Kept"}'),
        ],
    )
    continued = web_api.post(
        "$batch",
        content=independent,
        headers={"Content-Type": "multipart/mixed; boundary=batch_3", "Prefer": "odata.continue-on-error"},
    )
    assert continued.status_code == 200
    assert [part.status for part in parse_batch_response(continued.headers["content-type"], continued.content)] == [
        400,
        204,
    ]


def test_change_tracking_delta_links_and_deletions(web_api: httpx.Client, dataverse: DataverseSimulator) -> None:
    assert web_api.get("accounts?$select=name", headers={"Prefer": "odata.track-changes"}).status_code == 400
    dataverse.tables["account"].change_tracking = True
    kept = create(web_api, "accounts", {"name": "Kept"})
    removed = create(web_api, "accounts", {"name": "Removed"})
    initial = web_api.get("accounts?$select=name", headers={"Prefer": "odata.track-changes"})
    assert initial.headers["Preference-Applied"] == "odata.track-changes"
    assert {row["name"] for row in initial.json()["value"]} == {"Kept", "Removed"}
    delta_link = initial.json()["@odata.deltaLink"]
    assert "$deltatoken=" in delta_link

    web_api.patch(f"accounts({kept})", json={"name": "Kept v2"}, headers={"If-Match": "*"})
    web_api.delete(f"accounts({removed})")
    delta = web_api.get(delta_link, headers={"Prefer": "odata.track-changes"}).json()
    assert delta["value"][0]["name"] == "Kept v2"
    assert delta["value"][1]["id"] == removed and delta["value"][1]["reason"] == "deleted"
    assert delta["value"][1]["@odata.context"].endswith("$metadata#accounts/$deletedEntity")
    assert web_api.get(delta["@odata.deltaLink"]).json()["value"] == []
    assert web_api.get("accounts?$filter=name eq 'x'", headers={"Prefer": "odata.track-changes"}).status_code == 400


def test_tokens_are_required_and_checked(dataverse_server: RunningServer, ca_bundle: str) -> None:
    verify = tls_context(ca_bundle)
    anonymous = httpx.get(f"{dataverse_server.url}{API}/accounts", verify=verify)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")
    forged = httpx.get(
        f"{dataverse_server.url}{API}/accounts", headers={"Authorization": "Bearer abc.def.ghi"}, verify=verify
    )
    assert forged.status_code == 401


def test_wrong_audience_is_refused(
    identity_server: RunningServer, dataverse_server: RunningServer, ca_bundle: str
) -> None:
    token = client_credentials_token(identity_server.url, "https://someone-else.crm.dynamics.com", ca_bundle)
    response = httpx.get(
        f"{dataverse_server.url}{API}/accounts",
        headers={"Authorization": f"Bearer {token}"},
        verify=tls_context(ca_bundle),
    )
    assert response.status_code == 401


def test_injected_throttling_has_dataverses_body_and_retry_after(
    web_api: httpx.Client, dataverse: DataverseSimulator
) -> None:
    dataverse.add_fault(Fault(path_prefix=f"{API}/accounts", status=429, retry_after=12, count=1))
    throttled = web_api.get("accounts")
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "12"
    assert error_of(throttled)["code"] == "0x80072322"
    assert web_api.get("accounts").status_code == 200


def test_metadata_endpoints(web_api: httpx.Client) -> None:
    entity = web_api.get(
        "EntityDefinitions(LogicalName='opportunity')",
        params={"$select": "LogicalName,EntitySetName", "$expand": "Keys($select=LogicalName,EntityKeyIndexStatus)"},
    ).json()
    assert entity["EntitySetName"] == "opportunities"
    assert (
        entity["Keys"][0]["LogicalName"] == "pcs_referralidkey"
        and entity["Keys"][0]["EntityKeyIndexStatus"] == "Active"
    )
    attribute = web_api.get(
        "EntityDefinitions(LogicalName='opportunity')/Attributes(LogicalName='pcs_helpneeded')"
    ).json()
    assert attribute["AttributeType"] == "Picklist" and len(attribute["OptionSet"]["Options"]) == 7
    assert web_api.get("EntityDefinitions(LogicalName='nosuch')").status_code == 404

    created = web_api.post(
        "EntityDefinitions(LogicalName='account')/Attributes",
        json={
            "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
            "SchemaName": "new_Extra",
            "MaxLength": 50,
            "DisplayName": {"LocalizedLabels": [{"Label": "Extra", "LanguageCode": 1033}]},
        },
    )
    assert created.status_code == 204
    assert "/EntityDefinitions(LogicalName='account')/Attributes(" in created.headers["OData-EntityId"]
    assert web_api.post("accounts", json={"name": "With extra", "new_extra": "yes"}).status_code == 204
    wrong_prefix = web_api.post(
        "EntityDefinitions(LogicalName='account')/Attributes",
        json={
            "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
            "SchemaName": "pcs_Nope",
            "MaxLength": 5,
        },
    )
    assert wrong_prefix.status_code == 400
