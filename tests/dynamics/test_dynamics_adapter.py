"""The Dynamics 365 adapter against the Dataverse simulator over real HTTPS (tokens from the sandbox identity provider)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from sandbox import credentials
from sandbox.dataverse import SELLER_USER_ID, Caller, DataverseSimulator
from sandbox.server import Fault, RunningServer
from shared.crm.dynamics import (
    HELP_NEEDED_OPTIONS,
    MARKETPLACE_INTENT_OPTIONS,
    OPTION_VALUE_PREFIX,
    REFERRAL_RESPONSE_OPTIONS,
    SYNC_STATUS_OPTIONS,
    DynamicsCrm,
    choice_options,
)
from shared.crm.dynamics_http import DataverseConflictError, DataverseHttp
from shared.crm.dynamics_schema import load_schema
from shared.crm.port import (
    ChangedRecords,
    CrmAccount,
    CrmContact,
    CrmNotFoundError,
    CrmObjectKind,
    CrmPort,
    CrmRef,
    CrmSolution,
    CrmTransientError,
    CrmValidationError,
    RecordUpdate,
)
from shared.http import tls_context
from shared.settings import Settings, load_settings
from tests.conftest import base_environment

AT = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def dynamics_settings(identity_url: str, dataverse_url: str, ca_bundle: str, **overrides: str) -> Settings:
    return load_settings(
        base_environment(
            "UseDevelopmentStorage=true",
            CRM_KIND="dynamics",
            DATAVERSE_URL=dataverse_url,
            DATAVERSE_TENANT_ID=credentials.TENANT_ID,
            DATAVERSE_CLIENT_ID=credentials.DATAVERSE_CLIENT_ID,
            DATAVERSE_CLIENT_SECRET=credentials.DATAVERSE_CLIENT_SECRET,
            DATAVERSE_AUTHORITY_HOST=identity_url,
            TLS_CA_BUNDLE=ca_bundle,
            **overrides,
        )
    )


@pytest.fixture
def settings(identity_server: RunningServer, dataverse_server: RunningServer, ca_bundle: str) -> Settings:
    return dynamics_settings(identity_server.url, dataverse_server.url, ca_bundle)


@pytest.fixture
def crm(settings: Settings) -> Iterator[DynamicsCrm]:
    adapter = DynamicsCrm(settings, page_size=2)
    yield adapter
    adapter.http.close()


def rows(dataverse: DataverseSimulator, table: str) -> list[dict[str, object]]:
    with dataverse.lock:
        return [dict(row) for row in dataverse.records[table].values()]


def test_the_adapter_implements_the_port(crm: DynamicsCrm) -> None:
    assert isinstance(crm, CrmPort)
    assert crm.kind == "dynamics"


def test_choice_values_match_the_schema_file() -> None:
    schema = load_schema()
    columns = {column.logical_name: column for column in schema.table("opportunity").columns}
    for column, options in (
        ("pcs_helpneeded", HELP_NEEDED_OPTIONS),
        ("pcs_referralresponse", REFERRAL_RESPONSE_OPTIONS),
        ("pcs_syncstatus", SYNC_STATUS_OPTIONS),
        ("pcs_marketplaceintent", MARKETPLACE_INTENT_OPTIONS),
    ):
        assert {option.label: option.value for option in columns[column].options} == options
    assert schema.publisher.customization_option_value_prefix == OPTION_VALUE_PREFIX
    for column in ("pcs_solutionarea", "pcs_solutionplay", "pcs_partnerrole"):  # the taxonomy's, numbered alike
        assert {option.label: option.value for option in columns[column].options} == choice_options(column)


def test_upsert_by_referral_id_creates_once_then_updates(crm: DynamicsCrm, dataverse: DataverseSimulator) -> None:
    values = RecordUpdate(
        name="Contoso migration",
        deal_value=Decimal("25000.50"),
        currency="EUR",
        close_date=dt.date(2026, 6, 30),
        notes="From Partner Center",
        sync_enabled=True,
        help_needed="ProofOfConceptOrDemo",
        referral_status="New / Pending",
        lifecycle="pending",
    )
    first = crm.upsert_by_referral_id("opportunity", "ref-1", values)
    second = crm.upsert_by_referral_id("opportunity", "ref-1", RecordUpdate(referral_status="Active / Accepted"))

    assert first.created and not second.created
    assert first.ref == second.ref
    assert len(rows(dataverse, "opportunity")) == 1
    record = crm.read(first.ref)
    assert record.name == "Contoso migration"
    assert record.deal_value == Decimal("25000.5")
    assert record.currency == "EUR"
    assert record.close_date == dt.date(2026, 6, 30)
    assert record.connector.referral_id == "ref-1"
    assert record.connector.help_needed == "ProofOfConceptOrDemo"
    assert record.connector.referral_status == "Active / Accepted"
    assert record.connector.sync_enabled
    assert record.modified_by_integration
    assert not record.stage.is_closed


@pytest.mark.parametrize("kind", ["opportunity", "lead"])
def test_fy26_cosell_fields_and_marketplace_intent_round_trip(
    crm: DynamicsCrm, dataverse: DataverseSimulator, kind: CrmObjectKind
) -> None:
    base = (
        RecordUpdate(name="Taxonomy deal", close_date=dt.date(2026, 12, 1))
        if kind == "opportunity"
        else RecordUpdate(lead_company="Taxonomy Ltd", lead_last_name="Akers")
    )
    created = crm.upsert_by_referral_id(kind, f"ref-taxonomy-{kind}", base)
    crm.update_fields(
        created.ref,
        RecordUpdate(
            solution_area="Security", solution_play="Data Security", partner_role="Advisory", marketplace_intent="No"
        ),
    )
    connector = crm.read(created.ref).connector
    assert (connector.solution_area, connector.solution_play, connector.partner_role) == (
        "Security",
        "Data Security",
        "Advisory",
    )
    assert connector.marketplace_intent == "No"
    (row,) = rows(dataverse, kind)
    assert isinstance(row["pcs_solutionarea"], int)  # a choice's number, as Dataverse stores it
    with pytest.raises(CrmValidationError, match="pcs_partnerrole"):
        crm.update_fields(created.ref, RecordUpdate(partner_role="Reseller"))


def test_a_patch_on_a_deleted_record_is_not_found_and_creates_nothing(
    crm: DynamicsCrm, dataverse: DataverseSimulator
) -> None:
    ref = crm.upsert_by_referral_id("opportunity", "ref-gone", RecordUpdate(name="Soon gone")).ref
    crm.http.request("test", "DELETE", f"opportunities({ref.id})")

    with pytest.raises(CrmNotFoundError):
        crm.update_fields(ref, RecordUpdate(notes="edit after delete"))

    assert rows(dataverse, "opportunity") == []


def test_a_stale_etag_is_a_conflict(crm: DynamicsCrm) -> None:
    ref = crm.upsert_by_referral_id("opportunity", "ref-etag", RecordUpdate(name="Etag")).ref
    old_etag = crm.http.get_json("test", f"opportunities({ref.id})", params={"$select": "name"})["@odata.etag"]
    crm.update_fields(ref, RecordUpdate(notes="someone else's edit"))

    with pytest.raises(DataverseConflictError, match="RowVersion"):
        crm.http.request(
            "test",
            "PATCH",
            f"opportunities({ref.id})",
            json_body={"description": "mine"},
            headers={"If-Match": old_etag},
        )


def test_account_match_escapes_filter_values(crm: DynamicsCrm, dataverse: DataverseSimulator) -> None:
    customer = CrmAccount(name="O'Brien & Co", postal_code="D02 X285", country="IE", city="Dublin")
    created = crm.find_or_create_account(customer)
    again = crm.find_or_create_account(CrmAccount(name="o'brien & co", postal_code="D02 X285"))
    elsewhere = crm.find_or_create_account(CrmAccount(name="O'Brien & Co", postal_code="10115"))
    injected = crm.find_or_create_account(CrmAccount(name="x' or name ne 'y", postal_code="D02 X285"))

    assert again == created
    assert len({created, elsewhere, injected}) == 3
    stored = {row["accountid"]: row for row in rows(dataverse, "account")}
    assert stored[created]["name"] == "O'Brien & Co"
    assert stored[created]["address1_country"] == "IE"
    assert stored[injected]["name"] == "x' or name ne 'y"


def test_contact_match_by_email_is_case_insensitive(crm: DynamicsCrm, dataverse: DataverseSimulator) -> None:
    account_id = crm.find_or_create_account(CrmAccount(name="Fabrikam", postal_code="98052"))
    first = crm.find_or_create_contact(
        CrmContact(first_name="Ann", last_name="O'Neil", email="Ann@Fabrikam.example"), account_id
    )
    again = crm.find_or_create_contact(CrmContact(last_name="Other", email="ann@fabrikam.example"), None)

    assert again == first
    contact = next(row for row in rows(dataverse, "contact") if row["contactid"] == first)
    assert contact["parentcustomerid"] == account_id


def test_read_returns_account_contacts_and_solutions(crm: DynamicsCrm) -> None:
    ref = crm.upsert_by_referral_id("opportunity", "ref-read", RecordUpdate(name="Read me")).ref
    account_id = crm.find_or_create_account(CrmAccount(name="Northwind", postal_code="1000", country="BE"))
    contacts = [
        crm.find_or_create_contact(CrmContact(last_name=name, email=f"{name}@northwind.example"), account_id)
        for name in ("primary", "second", "third")
    ]
    crm.update_fields(ref, RecordUpdate(account_id=account_id))
    crm.set_contacts(ref, contacts)
    crm.set_solutions(
        ref,
        [
            CrmSolution(solution_id="SOL-1", name="One", publisher="Contoso", solution_type="3P"),
            CrmSolution(solution_id="SOL-2", name="Two"),
        ],
    )
    crm.own_user_id()  # once per adapter (WhoAmI), not per read
    before = dict(crm.api_call_counts())
    record = crm.read(ref)
    calls = {
        name: count - before.get(name, 0) for name, count in crm.api_call_counts().items() if count != before.get(name)
    }

    assert record.account is not None and record.account.id == account_id and record.account.country == "BE"
    assert record.contacts[0].id == contacts[0]  # the primary (parent contact) comes first
    assert sorted(contact.id or "" for contact in record.contacts) == sorted(
        contacts
    )  # stakeholders: same second, any order
    assert sorted(solution.solution_id for solution in record.solutions) == ["SOL-1", "SOL-2"]
    # the record with $expand, its stakeholder connections, and the owner's email once per owner
    assert calls == {"read": 2, "read_owner": 1}
    before = dict(crm.api_call_counts())
    crm.read(ref)
    assert crm.api_call_counts()["read"] - before["read"] == 2
    assert crm.api_call_counts()["read_owner"] == before["read_owner"]  # cached

    crm.set_contacts(ref, [contacts[2]])
    crm.set_solutions(ref, [CrmSolution(solution_id="SOL-2", name="Two renamed")])
    record = crm.read(ref)
    assert [contact.id for contact in record.contacts] == [contacts[2]]
    assert [(solution.solution_id, solution.name) for solution in record.solutions] == [("SOL-2", "Two renamed")]


def test_set_solutions_writes_in_one_batch(crm: DynamicsCrm, dataverse_server: RunningServer) -> None:
    ref = crm.upsert_by_referral_id("opportunity", "ref-batch", RecordUpdate(name="Batch")).ref
    crm.set_solutions(ref, [CrmSolution(solution_id=f"SOL-{n}", name=f"S{n}") for n in range(5)])

    batches = [entry for entry in dataverse_server.simulator.requests_log() if entry["path"].endswith("$batch")]
    assert len(batches) == 1
    assert crm.api_call_counts()["set_solutions"] == 2  # list the current ones, then one $batch


def test_changed_records_across_pages_with_ties(crm: DynamicsCrm, dataverse: DataverseSimulator) -> None:
    tie = dt.datetime(2026, 3, 1, 9, 30, 0, tzinfo=dt.UTC)
    seller = Caller(SELLER_USER_ID)
    with dataverse.lock:
        dataverse.clock = lambda: tie
        synced = [
            dataverse.insert("opportunity", {"name": f"Tie {n}", "pcs_syncwithpartnercenter": True}, seller)[
                "opportunityid"
            ]
            for n in range(7)
        ]
        dataverse.insert("opportunity", {"name": "Not synced", "pcs_syncwithpartnercenter": False}, seller)
        lead = dataverse.insert("lead", {"subject": "Lead", "lastname": "L", "pcs_syncwithpartnercenter": True}, seller)

    result = crm.changed_since(None)

    ids = [change.ref.id for change in result.changes]
    assert sorted(ids) == sorted([*synced, lead["leadid"]])
    assert len(ids) == len(set(ids))
    assert {change.stamp for change in result.changes} == {tie}  # from modifiedon, not our clock
    assert result.position is None
    assert crm.api_call_counts()["changed_records"] >= 5  # pages of 2: the adapter followed nextLinks

    later = tie + dt.timedelta(minutes=10)
    with dataverse.lock:
        dataverse.clock = lambda: later
        record = dataverse.records["opportunity"][synced[3]]
        dataverse.update(dataverse.tables["opportunity"], record, {"description": "seller edit"}, seller)
    # The query's lower bound is inclusive, to the second.
    following = crm.changed_since(later)
    assert [(change.ref.id, change.stamp) for change in following.changes] == [(synced[3], later)]
    assert crm.changed_since(later + dt.timedelta(seconds=1)).changes == []


def test_solution_changes_are_reported_as_their_parent(crm: DynamicsCrm, dataverse: DataverseSimulator) -> None:
    ref = crm.upsert_by_referral_id("opportunity", "ref-child", RecordUpdate(name="Parent", sync_enabled=True)).ref
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).replace(microsecond=0)
    with dataverse.lock:
        dataverse.clock = lambda: later
    crm.set_solutions(ref, [CrmSolution(solution_id="SOL-9", name="Nine")])

    result = crm.changed_since(later)
    assert [(change.ref, change.stamp) for change in result.changes] == [(ref, later)]


def test_change_tracking_follows_delta_links(
    identity_server: RunningServer, dataverse_server: RunningServer, ca_bundle: str, dataverse: DataverseSimulator
) -> None:
    with dataverse.lock:
        for table in ("opportunity", "lead", "pcs_partnercentersolution"):
            dataverse.tables[table].change_tracking = True
    crm = DynamicsCrm(
        dynamics_settings(identity_server.url, dataverse_server.url, ca_bundle, DATAVERSE_CHANGE_TRACKING="true"),
        page_size=2,
    )
    refs = [
        crm.upsert_by_referral_id("opportunity", f"ref-ct-{n}", RecordUpdate(name=f"CT {n}", sync_enabled=True)).ref
        for n in range(3)
    ]
    crm.upsert_by_referral_id("opportunity", "ref-ct-off", RecordUpdate(name="Off", sync_enabled=False))

    def refs_of(found: ChangedRecords) -> list[CrmRef]:
        return sorted({change.ref for change in found.changes}, key=lambda ref: ref.id)

    first = crm.changed_since(None)
    assert refs_of(first) == sorted(refs, key=lambda ref: ref.id)
    assert all(change.stamp is not None for change in first.changes)
    assert first.position is not None
    assert crm.changed_since(None, position=first.position).changes == []

    crm.update_fields(refs[1], RecordUpdate(notes="changed"))
    crm.set_solutions(refs[2], [CrmSolution(solution_id="SOL-CT", name="CT")])
    second = crm.changed_since(None, position=first.position)
    assert refs_of(second) == sorted([refs[1], refs[2]], key=lambda ref: ref.id)
    crm.http.close()


def test_win_and_lose_use_the_actions(crm: DynamicsCrm, dataverse: DataverseSimulator) -> None:
    won = crm.upsert_by_referral_id("opportunity", "ref-won", RecordUpdate(name="Won deal", deal_value=Decimal(10))).ref
    lost = crm.upsert_by_referral_id("opportunity", "ref-lost", RecordUpdate(name="Lost deal")).ref

    crm.close(won, won=True)
    crm.close(lost, won=False)
    calls = crm.api_call_counts()["close"]
    crm.close(won, won=True)  # already won: one read, no action

    assert crm.api_call_counts()["close"] == calls + 1
    assert crm.read(won).stage.is_won and crm.read(won).stage.is_closed
    assert crm.read(lost).stage.is_closed and not crm.read(lost).stage.is_won
    state = {row["opportunityid"]: (row["statecode"], row["statuscode"]) for row in rows(dataverse, "opportunity")}
    assert state[won.id] == (1, 3) and state[lost.id] == (2, 4)
    assert len(rows(dataverse, "opportunityclose")) == 2


def test_upsert_with_a_won_lifecycle_closes_the_opportunity(crm: DynamicsCrm, dataverse: DataverseSimulator) -> None:
    ref = crm.upsert_by_referral_id("opportunity", "ref-life", RecordUpdate(name="Life", lifecycle="won")).ref
    assert crm.read(ref).stage.is_won
    crm.update_fields(ref, RecordUpdate(lifecycle="active"))
    assert not crm.read(ref).stage.is_closed


def test_leads_are_disqualified_and_qualification_is_detected(crm: DynamicsCrm, dataverse: DataverseSimulator) -> None:
    lead = crm.upsert_by_referral_id(
        "lead",
        "ref-lead",
        RecordUpdate(name="Lead", lead_company="Adatum", lead_last_name="Lee", lead_email="lee@adatum.example"),
    ).ref
    with pytest.raises(CrmValidationError):
        crm.close(lead, won=True)
    record = crm.read(lead)
    assert record.account is not None and record.account.name == "Adatum"
    assert record.contacts[0].email == "lee@adatum.example"

    other = crm.upsert_by_referral_id("lead", "ref-lead-2", RecordUpdate(name="Qualify me", lead_last_name="Q")).ref
    response = crm.http.request(
        "test",
        "POST",
        f"leads({other.id})/Microsoft.Dynamics.CRM.QualifyLead",
        json_body={"CreateAccount": False, "CreateContact": False, "CreateOpportunity": True, "Status": 3},
        expected=(200,),
    )
    opportunity_id = response.json()["value"][0]["opportunityid"]
    crm.close(lead, won=False)

    assert crm.read(lead).stage.is_disqualified
    qualified = crm.read(other).stage
    assert qualified.is_qualified and qualified.converted_opportunity_id == opportunity_id


def test_audit_is_newest_first_and_bounded(crm: DynamicsCrm) -> None:
    ref = crm.upsert_by_referral_id("opportunity", "ref-audit", RecordUpdate(name="Audit")).ref
    crm.append_audit(ref, "first", at=AT)
    crm.append_audit(ref, "second", at=AT + dt.timedelta(minutes=1))
    assert crm.read(ref).connector.audit.split("\n") == ["2026-03-01T12:01:00Z second", "2026-03-01T12:00:00Z first"]

    for n in range(5):
        crm.append_audit(ref, f"{n} " + "x" * 6000, at=AT)
    audit = crm.read(ref).connector.audit
    assert len(audit) <= 20000
    assert audit.startswith("2026-03-01T12:00:00Z 4 ")


def test_sync_result_marks_the_name_and_the_mark_survives_a_rename(
    crm: DynamicsCrm, dataverse: DataverseSimulator
) -> None:
    ref = crm.upsert_by_referral_id("opportunity", "ref-mark", RecordUpdate(name="Marked")).ref
    crm.set_sync_result(ref, "Synced", AT)
    stored = rows(dataverse, "opportunity")[0]
    assert stored["name"] == "Marked ✔"
    assert crm.read(ref).name == "Marked"
    assert crm.read(ref).connector.sync_status == "Synced"

    crm.upsert_by_referral_id("opportunity", "ref-mark", RecordUpdate(name="Renamed"))
    assert rows(dataverse, "opportunity")[0]["name"] == "Renamed ✔"

    crm.set_sync_result(ref, "Error", AT, audit_line="customer country 'Germany' is not a two-letter ISO code")
    record = crm.read(ref)
    assert rows(dataverse, "opportunity")[0]["name"] == "Renamed ✖"
    assert record.connector.sync_status == "Error"
    assert "not a two-letter ISO code" in record.connector.audit


def test_a_seller_edit_is_not_the_integrations(
    crm: DynamicsCrm, dataverse_server: RunningServer, ca_bundle: str
) -> None:
    ref = crm.upsert_by_referral_id("opportunity", "ref-seller", RecordUpdate(name="Seller")).ref
    assert crm.read(ref).modified_by_integration
    httpx.patch(
        f"{dataverse_server.url}/_sandbox/seller/opportunities/{ref.id}",
        json={"description": "seller typed this"},
        verify=tls_context(ca_bundle),
    ).raise_for_status()
    record = crm.read(ref)
    assert not record.modified_by_integration
    assert record.modified_by_id == SELLER_USER_ID


def test_throttling_is_retried_after_retry_after(crm: DynamicsCrm, dataverse: DataverseSimulator) -> None:
    ref = crm.upsert_by_referral_id("opportunity", "ref-429", RecordUpdate(name="Throttled")).ref
    dataverse.add_fault(
        Fault(method="GET", path_prefix="/api/data/v9.2/opportunities", status=429, retry_after=1, count=1)
    )

    started = time.monotonic()
    record = crm.read(ref)
    elapsed = time.monotonic() - started

    assert record.name == "Throttled"
    assert elapsed >= 1.0
    statuses = [entry["status"] for entry in dataverse.requests_log() if entry["method"] == "GET"]
    assert statuses[-3:-1] == [429, 200] or 429 in statuses


def test_throttling_that_persists_is_transient(settings: Settings, dataverse: DataverseSimulator) -> None:
    waits: list[float] = []
    crm = DynamicsCrm(settings, http=DataverseHttp(settings, max_retries=2, sleep=waits.append))
    dataverse.add_fault(Fault(method="GET", path_prefix="/api/data/v9.2/accounts", status=429, retry_after=1, count=3))

    with pytest.raises(CrmTransientError) as raised:
        crm.find_or_create_account(CrmAccount(name="Busy"))

    assert waits == [1.0, 1.0]  # retried within the budget, after Retry-After each time
    assert raised.value.retry_after_seconds == 1.0
    assert "0x80072322" in str(raised.value)
    crm.http.close()


def test_a_wait_longer_than_the_retry_budget_goes_back_to_the_queue_at_once(
    settings: Settings, dataverse: DataverseSimulator
) -> None:
    waits: list[float] = []
    crm = DynamicsCrm(settings, http=DataverseHttp(settings, sleep=waits.append))
    dataverse.add_fault(Fault(method="GET", path_prefix="/api/data/v9.2/accounts", status=429, retry_after=7, count=1))

    with pytest.raises(CrmTransientError) as raised:
        crm.find_or_create_account(CrmAccount(name="Busy"))

    assert waits == []  # not slept through in-process: the queue retries the sync after the wait
    assert raised.value.retry_after_seconds == 7.0
    crm.http.close()


def test_validation_errors_name_the_field(crm: DynamicsCrm) -> None:
    with pytest.raises(CrmValidationError) as raised:
        crm.upsert_by_referral_id("opportunity", "ref-bad", RecordUpdate(name="x" * 400))
    assert "name" in raised.value.fields
    with pytest.raises(CrmValidationError, match="currency 'XYZ'"):
        crm.upsert_by_referral_id("opportunity", "ref-bad", RecordUpdate(currency="XYZ"))


def test_a_rejected_token_is_renewed_once(crm: DynamicsCrm, dataverse: DataverseSimulator) -> None:
    ref = crm.upsert_by_referral_id("opportunity", "ref-401", RecordUpdate(name="Renew")).ref
    dataverse.add_fault(Fault(method="GET", path_prefix="/api/data/v9.2/opportunities", status=401, count=1))

    assert crm.read(ref).name == "Renew"
    statuses = [
        entry["status"]
        for entry in dataverse.requests_log()
        if entry["path"].startswith("/api/data/v9.2/opportunities(")
    ]
    assert 401 in statuses and statuses[-1] == 200


def test_a_slow_answer_times_out_as_transient(settings: Settings, dataverse: DataverseSimulator) -> None:
    crm = DynamicsCrm(settings, http=DataverseHttp(settings, timeout_seconds=0.5))
    dataverse.add_fault(Fault(method="GET", path_prefix="/api/data/v9.2/accounts", latency_ms=1500, count=1))

    with pytest.raises(CrmTransientError, match="timed out"):
        crm.find_or_create_account(CrmAccount(name="Slow"))
    crm.http.close()
