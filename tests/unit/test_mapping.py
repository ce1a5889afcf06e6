"""Referral <-> neutral view <-> CRM records, and the JSON Patch built from neutral changes."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from shared.crm.port import (
    ConnectorFields,
    CrmAccount,
    CrmContact,
    CrmRecord,
    CrmRef,
    CrmSolution,
    StageFacts,
)
from shared.mapping.fields import ReadContext, decimal_text
from shared.mapping.rules import crm_object_for
from shared.mapping.status import ACCEPT
from shared.mapping.to_crm import record_update
from shared.mapping.to_partner_center import new_referral, patch_operations
from shared.mapping.views import crm_view, referral_view, same_value
from shared.model.referral import Referral
from shared.partner_center.contract import contract

REFERRAL: dict[str, Any] = {
    "id": "r-1",
    "engagementId": "e-1",
    "name": "Contoso migration",
    "status": "New",
    "substatus": "Pending",
    "type": "Shared",
    "qualification": "SalesQualified",
    "eTag": '"1"',
    "customerProfile": {
        "name": "Contoso",
        "address": {"addressLine1": "1 Main St", "city": "Berlin", "postalCode": "10115", "country": "DE"},
        "team": [
            {"firstName": "Zoe", "lastName": "Zed", "email": "Zoe@Contoso.example"},
            {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@contoso.example"},
        ],
    },
    "consent": {"consentToShareReferralWithMicrosoftSellers": True},
    "details": {
        "dealValue": 1.2e5,
        "currency": "eur",
        "closingDateTime": "2027-03-31T00:00:00Z",
        "notes": "  Needs a PoC  ",
        "requirements": {"solutions": [{"id": "SOL-2", "name": "Two"}, {"id": "SOL-1", "name": "One"}]},
    },
    "inviteContext": {"assistanceRequestCode": "ProofOfConceptOrDemo", "invitedBy": {"organizationId": "msft"}},
    "trackingInfo": {"microsoftMsxId": "MSX-9"},
}


def test_referral_view_normalises_every_field() -> None:
    view = referral_view(Referral.model_validate(REFERRAL))
    assert view["name"] == "Contoso migration"
    assert view["deal_value"] == "120000"
    assert view["currency"] == "EUR"
    assert view["close_date"] == "2027-03-31"
    assert view["notes"] == "Needs a PoC"
    assert view["customer"] == {
        "name": "Contoso",
        "street": "1 Main St",
        "city": "Berlin",
        "state": None,
        "postal_code": "10115",
        "country": "DE",
    }
    assert [contact["email"] for contact in view["contacts"]] == ["ada@contoso.example", "zoe@contoso.example"]
    assert [solution["id"] for solution in view["solutions"]] == ["SOL-1", "SOL-2"]
    assert view["help_needed"] == "ProofOfConceptOrDemo"
    assert view["visible"] is True
    assert view["lifecycle"] == "pending"
    assert view["status_mirror"] == "New / Pending"
    assert view["microsoft_crm_id"] == "MSX-9"


def test_microsofts_related_referral_supplies_the_msx_id() -> None:
    ours = Referral.model_validate({**REFERRAL, "trackingInfo": None})
    microsoft = Referral.model_validate({"id": "m-1", "trackingInfo": {"microsoftMsxId": "MSX-42"}})
    assert "microsoft_crm_id" not in referral_view(ours)
    assert referral_view(ours, ReadContext(related=microsoft))["microsoft_crm_id"] == "MSX-42"


def record(**overrides: Any) -> CrmRecord:
    values: dict[str, Any] = {
        "ref": CrmRef(kind="opportunity", id="006A"),
        "name": "Contoso migration",
        "account": CrmAccount(id="001A", name="Contoso", postal_code="10115", country="Germany"),
        "contacts": [CrmContact(last_name="Lovelace", email="ADA@contoso.example")],
        "solutions": [CrmSolution(id="a1", solution_id="SOL-1", name="One")],
        "stage": StageFacts(stage_name="Prospecting"),
        "connector": ConnectorFields(sync_enabled=True, help_needed="ProofOfConceptOrDemo"),
        "deal_value": Decimal("120000.00"),
        "currency": "EUR",
        "close_date": dt.date(2027, 3, 31),
        "owner_name": "Sam Seller",
        "owner_email": "sam@partner.example",
    }
    values.update(overrides)
    return CrmRecord(**values)


def test_crm_view_matches_the_referral_view_for_the_same_facts() -> None:
    crm = crm_view(record(), ReadContext(pending_stage="Prospecting", accept_country_names=True))
    pc = referral_view(Referral.model_validate(REFERRAL))
    assert crm["deal_value"] == pc["deal_value"] == "120000"
    assert crm["customer"]["country"] == "DE"  # "Germany" read as DE because names are accepted
    assert crm["lifecycle"] == "pending"
    assert crm["team"] == [
        {"first_name": "Sam", "last_name": "Seller", "email": "sam@partner.example", "phone": None, "title": None}
    ]
    assert same_value("contacts", crm["contacts"], [{"email": "ada@contoso.example"}])


def test_country_text_is_kept_as_typed_when_names_are_not_accepted() -> None:
    crm = crm_view(record(), ReadContext(pending_stage=None, accept_country_names=False))
    assert crm["customer"]["country"] == "Germany"
    assert crm["lifecycle"] == "active"  # no pending stage (Dynamics 365)


def test_a_single_currency_org_has_no_currency_key() -> None:
    assert "currency" not in crm_view(
        record(currency=None), ReadContext(pending_stage=None, accept_country_names=False)
    )


def test_decimal_text_is_canonical() -> None:
    assert decimal_text(120000.0) == decimal_text("1.2E+5") == decimal_text(Decimal("120000.00")) == "120000"
    assert decimal_text("99.50") == "99.5"


def _as_sent(operations: list[Any]) -> list[dict[str, Any]]:
    return [operation.model_dump(mode="json") for operation in operations]


def test_patch_replaces_existing_members_and_adds_missing_ones() -> None:
    terms = contract()
    referral = Referral.model_validate({**REFERRAL, "details": {"dealValue": 5}, "inviteContext": None})
    operations, kept = patch_operations(
        referral, {"deal_value": "7.5", "notes": "new", "visible": True}, ACCEPT, accept_country_names=False
    )
    assert kept == []
    assert _as_sent(operations) == [
        terms.patch_operation("/details/dealValue", 7.5),
        terms.patch_operation("/details/notes", "new", op="add"),
        terms.patch_operation("/consent/consentToShareReferralWithMicrosoftSellers", True),
        terms.patch_operation("/status", "Active"),
        terms.patch_operation("/substatus", "Accepted"),
    ]


def test_fields_partner_center_does_not_patch_are_left_out_and_named() -> None:
    referral = Referral.model_validate(REFERRAL)
    changes = {"name": "Renamed", "help_needed": "QuotesOrLicensing", "notes": "new", "customer": {"name": "Other"}}
    operations, kept = patch_operations(referral, changes, None, accept_country_names=False)
    assert kept == ["name", "help_needed", "customer"]
    assert _as_sent(operations) == [contract().patch_operation("/details/notes", "new")]
    # Every path we send is one the contract lists (the simulator refuses any other).
    assert all(contract().is_patchable(operation.path) for operation in operations)


def test_an_address_change_sends_only_changed_parts_and_only_if_the_contract_allows_it() -> None:
    referral = Referral.model_validate(
        {
            **REFERRAL,
            "customerProfile": {
                "name": "Contoso",
                "address": {
                    "addressLine1": "1 Main St",
                    "addressLine2": "Floor 2",
                    "city": "Seattle",
                    "region": "WA",
                    "state": None,
                    "postalCode": "98101",
                    "country": "US",
                },
            },
        }
    )
    view = referral_view(referral)
    assert view["customer"]["state"] == "WA"  # a US state is read from `region` as well as `state`
    moved = {**view["customer"], "city": "Redmond"}
    patchable = {*contract().patch_paths, "/customerProfile/address/city"}
    with _patch_paths(patchable):
        operations, kept = patch_operations(referral, {"customer": moved}, None, accept_country_names=False)
    paths = [operation.path for operation in operations]
    assert "/customerProfile/address/city" in paths
    assert not any(path.endswith(("/region", "/addressLine2", "/state", "/address")) for path in paths)
    # With the published contract (no address path), nothing of the customer is patched.
    operations, kept = patch_operations(referral, {"customer": moved}, None, accept_country_names=False)
    assert operations == [] and kept == ["customer"]


@contextlib.contextmanager
def _patch_paths(paths: set[str]) -> Iterator[None]:
    """The contract with other patchable paths (as an admin's edited contract.json would give)."""
    terms = contract()
    original = list(terms.data["patch"]["paths"])
    terms.data["patch"]["paths"] = sorted(paths)
    try:
        yield
    finally:
        terms.data["patch"]["paths"] = original


def test_new_referral_body_for_a_co_sell() -> None:
    view = crm_view(record(), ReadContext(pending_stage=None, accept_country_names=True))
    body = new_referral(view, crm_record_id="006A", accept_country_names=True)
    assert body["externalReferenceId"] == "006A"
    assert body["type"] == "Shared"
    assert body["consent"] == contract().consent_on_create(shared=True)
    assert set(body["consent"]) == {
        "consentToContact",
        "consentToToShareInfoWithOthers",
        "consentToMicrosoftToContactSpecificPartners",
        "consentToShareReferralWithMicrosoftSellers",
    }
    intent = body["details"]["requirements"]["additionalRequirements"]["attributes"]
    assert intent == [{"id": "HaveNotDecided", "type": "CustomerMarketplaceIntent"}]
    assert body["inviteContext"] == {"assistanceRequestCode": "ProofOfConceptOrDemo"}
    assert body["customerProfile"]["address"]["country"] == "DE"
    assert body["customerProfile"]["team"] == [{"lastName": "Lovelace", "email": "ada@contoso.example"}]
    assert body["details"]["dealValue"] == 120000.0
    assert body["details"]["closingDateTime"] == "2027-03-31T00:00:00Z"
    assert body["details"]["requirements"]["solutions"] == [{"id": "SOL-1", "name": "One"}]
    assert body["team"] == [{"firstName": "Sam", "lastName": "Seller", "email": "sam@partner.example"}]


def test_a_private_deal_is_independent_and_not_shared() -> None:
    view = crm_view(
        record(connector=ConnectorFields(sync_enabled=True)),
        ReadContext(pending_stage=None, accept_country_names=False),
    )
    body = new_referral(view, crm_record_id="006A", accept_country_names=True)
    assert body["type"] == "Independent"
    assert body["consent"]["consentToShareReferralWithMicrosoftSellers"] is False
    assert "inviteContext" not in body


def test_record_update_writes_only_the_changed_fields() -> None:
    update = record_update(
        {"deal_value": "150", "close_date": "2027-04-01"}, crm_object="opportunity", referral_status="Active / Accepted"
    )
    assert update.written() == {
        "deal_value": Decimal("150"),
        "close_date": dt.date(2027, 4, 1),
        "referral_status": "Active / Accepted",
    }


def test_a_lead_takes_the_customer_and_first_contact_on_itself() -> None:
    update = record_update(
        {
            "customer": {"name": "Fabrikam", "city": "Oslo", "postal_code": "0150", "country": "NO"},
            "contacts": [{"first_name": "Ann", "last_name": "Lee", "email": "ann@f.example"}],
        },
        crm_object="lead",
    )
    assert update.written() == {
        "lead_company": "Fabrikam",
        "lead_street": None,
        "lead_city": "Oslo",
        "lead_state": None,
        "lead_postal_code": "0150",
        "lead_country": "NO",
        "lead_first_name": "Ann",
        "lead_last_name": "Lee",
        "lead_email": "ann@f.example",
        "lead_phone": None,
    }


def test_lead_referrals_become_leads() -> None:
    lead = Referral.model_validate({"type": "Independent", "qualification": "Direct"})
    qualified = Referral.model_validate(
        {
            "type": "Independent",
            "qualification": "SalesQualified",
            "inviteContext": {"invitedBy": {"organizationId": "msft"}},
        }
    )
    assert crm_object_for(lead) == crm_object_for(qualified) == "lead"
    assert crm_object_for(Referral.model_validate(REFERRAL)) == "opportunity"


def test_a_customer_with_a_country_name_is_left_to_the_checks_not_raised() -> None:
    referral = Referral.model_validate(REFERRAL)
    customer = {"name": "Contoso", "country": "Germany"}  # a name, not a code: the engine's checks say so
    operations, kept = patch_operations(referral, {"customer": customer}, None, accept_country_names=False)
    assert (operations, kept) == ([], ["customer"])
    with _patch_paths({*contract().patch_paths, "/customerProfile/address/country", "/customerProfile/address/city"}):
        moved = {**customer, "city": "Munich"}
        operations, kept = patch_operations(referral, {"customer": moved}, None, accept_country_names=False)
    assert [operation.path for operation in operations] == ["/customerProfile/address/city"]


def test_docs_table_of_synced_fields_matches_the_registry() -> None:
    """docs/sync.md embeds `python -m shared fields-reference`; keep it current."""
    from pathlib import Path

    from shared.mapping.fields import reference_table

    text = (Path(__file__).resolve().parents[2] / "docs" / "sync.md").read_text(encoding="utf-8")
    start = text.index("<!-- fields-reference:start -->") + len("<!-- fields-reference:start -->")
    end = text.index("<!-- fields-reference:end -->")
    assert text[start:end].strip() == reference_table().strip()
