"""The Dataverse simulator as Microsoft's own Python SDK sees it (`powerplatform-dataverse-client`,
signed in with `azure-identity` against the identity simulator).

Each row: what the SDK does, the Microsoft Learn page of the behaviour, and the check. A failure
names the page and what the simulator answered.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from azure.identity import ClientSecretCredential
from PowerPlatform.Dataverse.client import DataverseClient
from PowerPlatform.Dataverse.core.errors import HttpError
from PowerPlatform.Dataverse.models.upsert import UpsertItem

from sandbox import credentials
from sandbox.dataverse import dataverse_factory
from sandbox.identity import identity_factory
from sandbox.server import RunningServer, serve
from sandbox.tls import ensure_ca

LEARN = "https://learn.microsoft.com/power-apps/developer/data-platform/webapi/"


@dataclass(frozen=True)
class Case:
    name: str
    documented_at: str
    check: Callable[[DataverseClient], None]


def _refused(call: Callable[[], Any], status: int, code: str | None = None) -> HttpError:
    with pytest.raises(HttpError) as refused:
        call()
    assert refused.value.status_code == status, refused.value
    if code is not None:
        assert refused.value.details.get("service_error_code") == code, refused.value.details
    return refused.value


def _field(record: Any, name: str) -> Any:
    assert record is not None, "no record"
    return record[name]


def metadata_tables(client: DataverseClient) -> None:
    info = client.tables.get("account")
    assert info is not None and info.entity_set_name == "accounts" and info.primary_id_attribute == "accountid"
    names = {table["LogicalName"] for table in client.tables.list()}
    assert {"account", "opportunity", "pcs_solutiondetail"} <= names


def metadata_columns_and_keys(client: DataverseClient) -> None:
    assert {column["LogicalName"] for column in client.tables.list_columns("account")} >= {"name", "accountid"}
    assert _field(client.tables.get_column("account", "name"), "AttributeType") == "String"
    keys = client.tables.get_alternate_keys("opportunity")
    assert [key.key_attributes for key in keys] == [["pcs_referralid"]]


def crud(client: DataverseClient) -> None:
    # create() first reads `Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata` (a type cast).
    record_id = client.records.create("account", {"name": "SDK CRUD"})
    assert _field(client.records.retrieve("account", record_id, select=["name"]), "name") == "SDK CRUD"
    client.records.update("account", record_id, {"name": "SDK renamed"})
    assert _field(client.records.retrieve("account", record_id, select=["name"]), "name") == "SDK renamed"
    client.records.delete("account", record_id)
    assert client.records.retrieve("account", record_id) is None  # the SDK's answer to Dataverse's 404


def new_text_column(client: DataverseClient) -> None:
    assert client.tables.add_columns("account", {"new_Nickname": "string"}) == ["new_Nickname"]
    record_id = client.records.create("account", {"name": "Column", "new_nickname": "Nick"})
    assert _field(client.records.retrieve("account", record_id, select=["new_nickname"]), "new_nickname") == "Nick"


def alternate_key_upsert(client: DataverseClient) -> None:
    key = {"pcs_solutionid": f"SOL-{uuid.uuid4().hex[:8]}"}
    client.records.upsert("pcs_solutiondetail", [UpsertItem(alternate_key=key, record={"pcs_name": "First"})])
    client.records.upsert("pcs_solutiondetail", [UpsertItem(alternate_key=key, record={"pcs_name": "Second"})])
    found = [
        record
        for page in client.records.list_pages(
            "pcs_solutiondetail", filter=f"pcs_solutionid eq '{key['pcs_solutionid']}'", select=["pcs_name"]
        )
        for record in page
    ]
    assert [record["pcs_name"] for record in found] == ["Second"]


def paging(client: DataverseClient) -> None:
    tag = uuid.uuid4().hex[:8]
    for number in range(5):
        client.records.create("contact", {"lastname": f"Page {tag} {number}"})
    pages = client.records.list_pages(
        "contact", filter=f"startswith(lastname, 'Page {tag}')", select=["lastname"], page_size=2
    )
    assert [len(page) for page in pages] == [2, 2, 1]


def batch_change_set(client: DataverseClient) -> None:
    batch = client.batch.new()
    with batch.changeset() as change_set:
        reference = change_set.records.create("account", {"name": "Batch parent"})
        change_set.records.create(
            "contact", {"lastname": "Batch child", "parentcustomerid_account@odata.bind": reference}
        )
    result = batch.execute()
    assert len(result.succeeded) == 2 and not result.failed, result


def batch_continue_on_error(client: DataverseClient) -> None:
    batch = client.batch.new()
    batch.records.create("account", {"name": "Batch ok"})
    batch.records.create("account", {"nosuchcolumn": 1})
    batch.records.create("account", {"name": "Batch after the error"})
    result = batch.execute(continue_on_error=True)
    assert [item.is_success for item in result.responses] == [True, False, True], result


def unknown_options_refused(client: DataverseClient) -> None:
    _refused(lambda: client.query.sql("SELECT name FROM account"), 400, "0x80060888")


CASES = [
    Case(
        "metadata: EntityDefinitions by LogicalName, list with $filter",
        LEARN + "query-metadata-web-api",
        metadata_tables,
    ),
    Case(
        "metadata: Attributes, one attribute, alternate keys",
        LEARN + "query-metadata-web-api",
        metadata_columns_and_keys,
    ),
    Case("CRUD (create reads the PicklistAttributeMetadata cast)", LEARN + "create-entity-web-api", crud),
    Case(
        "a new text column is created and written",
        LEARN + "create-update-column-definitions-using-web-api",
        new_text_column,
    ),
    Case(
        "upsert by alternate key: insert, then update",
        LEARN + "update-delete-entities-using-web-api#upsert-a-table-row",
        alternate_key_upsert,
    ),
    Case("paging with odata.maxpagesize and @odata.nextLink", LEARN + "query/page-results", paging),
    Case(
        "$batch: a change set with a Content-ID reference",
        LEARN + "execute-batch-operations-using-web-api",
        batch_change_set,
    ),
    Case(
        "$batch: continue-on-error",
        LEARN + "execute-batch-operations-using-web-api#handle-errors",
        batch_continue_on_error,
    ),
    Case("?sql= (not implemented here) is refused, not ignored", LEARN + "query/overview", unknown_options_refused),
]


@pytest.fixture(scope="module")
def client() -> Iterator[DataverseClient]:
    ca = str(ensure_ca().cert_path)
    previous = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = ca  # the SDK calls requests without a verify argument
    identity, dataverse = serve(identity_factory()), serve(dataverse_factory())
    servers: list[RunningServer] = [identity, dataverse]
    credential = ClientSecretCredential(
        credentials.TENANT_ID,
        credentials.DATAVERSE_CLIENT_ID,
        credentials.DATAVERSE_CLIENT_SECRET,
        authority=identity.url,
        disable_instance_discovery=True,
        connection_verify=ca,
    )
    try:
        yield DataverseClient(dataverse.url, credential)
    finally:
        for server in servers:
            server.stop()
        if previous is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = previous
        assert dataverse.errors == []


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_dataverse_sdk(client: DataverseClient, case: Case) -> None:
    try:
        case.check(client)
    except (AssertionError, HttpError, ValueError, RuntimeError) as error:
        pytest.fail(f"{case.name} (documented at {case.documented_at}): {type(error).__name__}: {error}")
