"""The Salesforce adapter against the simulator: polling, reads, writes, escaping, retries, sign-in."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from sandbox import credentials
from sandbox.salesforce import SalesforceSimulator, jwt_signing_key_path
from sandbox.server import Fault, RunningServer
from shared.crm.port import (
    CrmAccount,
    CrmAuthError,
    CrmContact,
    CrmObjectKind,
    CrmPort,
    CrmRef,
    CrmSolution,
    CrmTransientError,
    CrmValidationError,
    RecordUpdate,
)
from tests.salesforce.conftest import make_adapter, simulator

SELLER = "sally.seller@sandbox.example"


def _opportunity(sim: SalesforceSimulator, name: str, *, syncing: bool = True, **extra: Any) -> str:
    with sim.lock:
        values = {
            "Name": name,
            "StageName": "Qualification",
            "CloseDate": "2026-12-31",
            "PCS_Sync_With_Partner_Center__c": syncing,
        }
        return sim._create("Opportunity", {**values, **extra}, sim.seller_user_id)


def _freeze(sim: SalesforceSimulator, when: str | None) -> None:
    with sim.lock:
        sim.frozen_now = dt.datetime.fromisoformat(when) if when else None


def _requests(sim: SalesforceSimulator, path_part: str) -> list[dict[str, Any]]:
    return [entry for entry in sim.requests_log() if path_part in entry["path"]]


def test_adapter_satisfies_the_port(sf_server: RunningServer) -> None:
    assert isinstance(make_adapter(sf_server), CrmPort)


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_changed_since_across_page_boundary_with_ties_reports_each_change_with_its_stamp(
    sf_server: RunningServer,
) -> None:
    sim = simulator(sf_server)
    sim.page_size = 3  # pages of 3 rows, so 7 rows with one SystemModstamp straddle two page boundaries
    _freeze(sim, "2026-11-01T10:00:00.250+00:00")
    tied = {_opportunity(sim, f"Tied {index}") for index in range(7)}
    _opportunity(sim, "Not syncing", syncing=False)
    _freeze(sim, "2026-11-01T10:00:01.000+00:00")
    later = _opportunity(sim, "Later")
    with sim.lock:
        sim._create(
            "PCS_Solution__c",
            {"Name": "S", "PCS_Solution_Id__c": "SOL-1", "PCS_Opportunity__c": later},
            sim.seller_user_id,
        )
    _freeze(sim, None)
    adapter = make_adapter(sf_server)

    first = adapter.changed_since(None)

    pairs = [(change.ref.id, change.stamp) for change in first.changes]
    assert len(pairs) == len(set(pairs)) == 8  # the solution's change is the parent's, at the same stamp
    assert {change.ref.id for change in first.changes} == tied | {later}
    assert first.changes[-1].ref.id == later  # oldest change first
    assert first.changes[0].stamp == _at("2026-11-01T10:00:00.250+00:00")  # milliseconds kept
    assert first.position is None
    assert len([e for e in _requests(sim, "/query/") if e["method"] == "GET"]) >= 2  # nextRecordsUrl was followed
    assert adapter.api_call_counts()["changed_since"] > 0


def test_changed_since_a_whole_second_includes_every_change_in_that_second(sf_server: RunningServer) -> None:
    sim = simulator(sf_server)
    _freeze(sim, "2026-11-01T09:59:59.999+00:00")
    _opportunity(sim, "Just before")
    _freeze(sim, "2026-11-01T10:00:00.000+00:00")
    on_the_second = _opportunity(sim, "On the second")
    _freeze(sim, "2026-11-01T10:00:00.750+00:00")
    inside = _opportunity(sim, "Inside the second")
    _freeze(sim, None)

    found = make_adapter(sf_server).changed_since(_at("2026-11-01T10:00:00+00:00"))

    assert [change.ref.id for change in found.changes] == [on_the_second, inside]


def test_watermark_comes_from_salesforce_not_our_clock(sf_server: RunningServer) -> None:
    sim = simulator(sf_server)
    _freeze(sim, "2001-02-03T04:05:06.789+00:00")
    _opportunity(sim, "Old")
    _freeze(sim, None)
    result = make_adapter(sf_server).changed_since(None)
    assert [change.stamp for change in result.changes] == [_at("2001-02-03T04:05:06.789+00:00")]


def test_read_returns_everything_in_one_query(sf_server: RunningServer) -> None:
    sim = simulator(sf_server)
    with sim.lock:
        user = sim.seller_user_id
        account = sim._create(
            "Account", {"Name": "Contoso", "BillingPostalCode": "98052", "BillingCountry": "US"}, user
        )
        contact = sim._create(
            "Contact", {"FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@contoso.example"}, user
        )
    opportunity = _opportunity(
        sim, "Contoso deal ✔", AccountId=account, Amount=1234.5, PCS_Help_Needed__c="GeneralOrOther"
    )
    with sim.lock:
        sim._create(
            "OpportunityContactRole", {"OpportunityId": opportunity, "ContactId": contact, "IsPrimary": True}, user
        )
        sim._create(
            "PCS_Solution__c", {"Name": "Sol", "PCS_Solution_Id__c": "SOL-9", "PCS_Opportunity__c": opportunity}, user
        )
    adapter = make_adapter(sf_server)
    adapter.read(CrmRef(kind="opportunity", id=opportunity))  # warms the describe cache
    before = sum(adapter.api_call_counts().values())

    record = adapter.read(CrmRef(kind="opportunity", id=opportunity))

    assert sum(adapter.api_call_counts().values()) - before == 1
    assert record.name == "Contoso deal"  # sync mark stripped
    assert record.account is not None and (record.account.name, record.account.postal_code, record.account.country) == (
        "Contoso",
        "98052",
        "US",
    )
    assert [c.email for c in record.contacts] == ["ada@contoso.example"]
    assert [s.solution_id for s in record.solutions] == ["SOL-9"]
    assert (record.stage.stage_name, record.stage.is_closed, record.stage.is_won) == ("Qualification", False, False)
    assert record.deal_value == Decimal("1234.5")
    assert record.currency is None  # single-currency org: CurrencyIsoCode does not exist
    assert record.connector.sync_enabled and record.connector.help_needed == "GeneralOrOther"
    assert record.owner_name == "Sally Seller" and not record.modified_by_integration


def test_upsert_by_referral_id_creates_then_updates(sf_server: RunningServer) -> None:
    adapter = make_adapter(sf_server)
    values = RecordUpdate(
        name="Referral deal", close_date=dt.date(2026, 12, 1), deal_value=Decimal(100), sync_enabled=True
    )
    created = adapter.upsert_by_referral_id("opportunity", "ref-1", values)
    again = adapter.upsert_by_referral_id("opportunity", "ref-1", RecordUpdate(deal_value=Decimal(250)))

    assert created.created and not again.created and created.ref == again.ref
    record = adapter.read(created.ref)
    assert record.stage.stage_name == "Prospecting"  # the pending stage holds new referrals
    assert record.deal_value == Decimal(250) and record.connector.referral_id == "ref-1"
    assert record.modified_by_integration
    with pytest.raises(CrmValidationError, match="close_date"):
        adapter.upsert_by_referral_id("opportunity", "ref-2", RecordUpdate(name="No close date"))


@pytest.mark.parametrize("name", ["O'Brien & Co \\ Ltd", 'Say "hi" \\n Ltd', "100% \\_Real_ Co"])
def test_account_and_contact_matching_escapes_values(sf_server: RunningServer, name: str) -> None:
    adapter = make_adapter(sf_server)
    decoy = adapter.find_or_create_account(CrmAccount(name=name.replace("\\", ""), postal_code="D02"))
    first = adapter.find_or_create_account(CrmAccount(name=name, postal_code="D02", country="IE"))
    second = adapter.find_or_create_account(CrmAccount(name=name.upper(), postal_code="D02"))
    other_postal = adapter.find_or_create_account(CrmAccount(name=name, postal_code="D03"))

    assert first == second  # name match is case-insensitive, like Salesforce's
    assert len({decoy, first, other_postal}) == 3
    email = "o'brien@example.com"
    contact = adapter.find_or_create_contact(CrmContact(last_name="O'Brien", email=email), first)
    assert adapter.find_or_create_contact(CrmContact(last_name="Other", email=email.upper()), None) == contact


def test_contacts_solutions_sync_result_audit_and_close(sf_server: RunningServer) -> None:
    sim = simulator(sf_server)
    adapter = make_adapter(sf_server)
    ref = adapter.upsert_by_referral_id(
        "opportunity", "ref-9", RecordUpdate(name="Deal", close_date=dt.date(2026, 9, 1))
    ).ref
    a = adapter.find_or_create_contact(CrmContact(last_name="A", email="a@x.example"), None)
    b = adapter.find_or_create_contact(CrmContact(last_name="B", email="b@x.example"), None)

    adapter.set_contacts(ref, [a, b])
    adapter.set_contacts(ref, [b])
    adapter.set_solutions(ref, [CrmSolution(solution_id="S1", name="One"), CrmSolution(solution_id="S2", name="Two")])
    adapter.set_solutions(ref, [CrmSolution(solution_id="S2", name="Two v2")])
    adapter.set_sync_result(ref, "Synced", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    adapter.set_sync_result(
        ref,
        "Error",
        dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
        audit_line="customer country 'Germany' is not a two-letter ISO code",
    )
    record = adapter.read(ref)

    assert [c.email for c in record.contacts] == ["b@x.example"]
    assert [(s.solution_id, s.name) for s in record.solutions] == [("S2", "Two v2")]
    with sim.lock:
        stored = sim.records["Opportunity"][ref.id]
        assert stored["Name"] == "Deal ✖"  # one mark, replaced, never duplicated
    assert record.name == "Deal" and record.connector.sync_status == "Error"
    assert record.connector.audit.startswith("2026-01-02 00:00:00Z customer country 'Germany'")

    for index in range(40):  # the audit stays within the field length, newest first
        adapter.append_audit(ref, f"line {index} " + "x" * 1000)
    audit = adapter.read(ref).connector.audit
    assert len(audit) <= 32768 and audit.splitlines()[0].endswith("x" * 1000) and "line 39" in audit.splitlines()[0]

    adapter.close(ref, won=True)
    assert adapter.read(ref).stage.is_won
    calls = sum(adapter.api_call_counts().values())
    adapter.close(ref, won=True)  # already won: only the check
    assert sum(adapter.api_call_counts().values()) == calls + 1


def test_retries_request_limit_exceeded_with_backoff(sf_server: RunningServer) -> None:
    sim = simulator(sf_server)
    opportunity = _opportunity(sim, "Throttled")
    adapter = make_adapter(sf_server)
    adapter.read(CrmRef(kind="opportunity", id=opportunity))
    sim.add_fault(Fault(method="GET", path_prefix="/services/data/v62.0/query", status=403, count=2))

    record = adapter.read(CrmRef(kind="opportunity", id=opportunity))

    assert record.name == "Throttled"
    assert adapter.test_sleeps == [0.5, 1.0]  # type: ignore[attr-defined]
    assert [e["status"] for e in _requests(sim, "/query")][-3:] == [403, 403, 200]

    sim.add_fault(Fault(method="GET", path_prefix="/services/data/v62.0/query", status=403, count=10))
    with pytest.raises(CrmTransientError, match="REQUEST_LIMIT_EXCEEDED"):
        adapter.read(CrmRef(kind="opportunity", id=opportunity))


def test_signs_in_again_after_invalid_session_id(sf_server: RunningServer) -> None:
    sim = simulator(sf_server)
    opportunity = _opportunity(sim, "Session")
    adapter = make_adapter(sf_server)
    adapter.read(CrmRef(kind="opportunity", id=opportunity))
    with sim.lock:
        sim.sessions.clear()  # what POST /_sandbox/expire-sessions does

    assert adapter.read(CrmRef(kind="opportunity", id=opportunity)).name == "Session"
    assert len(_requests(sim, "/services/oauth2/token")) == 2
    assert 401 in [e["status"] for e in _requests(sim, "/query")]
    assert adapter.api_call_counts()["login"] == 2


def test_every_auth_mode_signs_in(sf_server: RunningServer) -> None:
    sim = simulator(sf_server)
    opportunity = _opportunity(sim, "Auth")
    modes = [
        {"SALESFORCE_AUTH": "client_credentials"},
        {
            "SALESFORCE_AUTH": "password",
            "SALESFORCE_USERNAME": credentials.SALESFORCE_USERNAME,
            "SALESFORCE_PASSWORD": credentials.SALESFORCE_PASSWORD,
            "SALESFORCE_SECURITY_TOKEN": credentials.SALESFORCE_SECURITY_TOKEN,
        },
        {
            "SALESFORCE_AUTH": "jwt",
            "SALESFORCE_USERNAME": credentials.SALESFORCE_USERNAME,
            "SALESFORCE_PRIVATE_KEY": jwt_signing_key_path().read_text(),
        },
    ]
    for mode in modes:
        assert make_adapter(sf_server, **mode).read(CrmRef(kind="opportunity", id=opportunity)).name == "Auth"
    assert len(_requests(sim, "/services/Soap/u/62.0")) == 1


def test_wrong_secret_is_an_auth_error_naming_the_mode(sf_server: RunningServer) -> None:
    adapter = make_adapter(sf_server, SALESFORCE_CLIENT_SECRET="wrong")
    with pytest.raises(CrmAuthError, match="client_credentials.*invalid_client"):
        adapter.changed_since(None)


def test_bad_field_setting_is_refused_with_its_name(sf_server: RunningServer) -> None:
    with pytest.raises(CrmValidationError, match="CRM_DEAL_VALUE_FIELD"):
        make_adapter(sf_server, CRM_DEAL_VALUE_FIELD="Amount FROM User --")


def test_multi_currency_org_reads_and_writes_currency() -> None:
    from sandbox.server import serve

    server = serve(lambda url: SalesforceSimulator(url, multi_currency=True))
    try:
        adapter = make_adapter(server)
        values = RecordUpdate(name="EUR deal", close_date=dt.date(2026, 5, 1), deal_value=Decimal(10), currency="EUR")
        ref = adapter.upsert_by_referral_id("opportunity", "ref-eur", values).ref
        assert adapter.read(ref).currency == "EUR"
    finally:
        server.stop()


def test_lead_read_and_conversion_detection(sf_server: RunningServer) -> None:
    sim = simulator(sf_server)
    adapter = make_adapter(sf_server)
    values = RecordUpdate(
        name="Northwind", lead_last_name="Smith", lead_email="smith@northwind.example", sync_enabled=True
    )
    ref = adapter.upsert_by_referral_id("lead", "lead-ref", values).ref
    assert adapter.read(ref).stage.lead_status == "Open - Not Contacted"
    with sim.lock:
        converted = sim.convert_lead(ref.id, sim.seller_user_id)
    record = adapter.read(ref)
    assert record.stage.is_qualified and record.stage.converted_opportunity_id == converted["opportunityId"]
    with pytest.raises(CrmValidationError):
        adapter.close(ref, won=True)


@pytest.mark.parametrize("kind", ["opportunity", "lead"])
def test_fy26_cosell_fields_and_marketplace_intent_round_trip(sf_server: RunningServer, kind: CrmObjectKind) -> None:
    adapter = make_adapter(sf_server)
    base = (
        RecordUpdate(name="Taxonomy deal", close_date=dt.date(2026, 12, 1))
        if kind == "opportunity"
        else RecordUpdate(lead_company="Taxonomy Ltd", lead_last_name="Akers")
    )
    cosell = RecordUpdate(
        solution_area="Security", solution_play="Data Security", partner_role="Advisory", marketplace_intent="Yes"
    )
    created = adapter.upsert_by_referral_id(kind, f"ref-taxonomy-{kind}", base)
    adapter.update_fields(created.ref, cosell)
    connector = adapter.read(created.ref).connector
    assert (connector.solution_area, connector.solution_play, connector.partner_role) == (
        "Security",
        "Data Security",
        "Advisory",
    )
    assert connector.marketplace_intent == "Yes"
    with pytest.raises(CrmValidationError, match="marketplace_intent|Marketplace"):
        adapter.update_fields(created.ref, RecordUpdate(marketplace_intent="Perhaps"))  # a restricted picklist
