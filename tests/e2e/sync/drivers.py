"""The people around the sync: Microsoft and the partner in Partner Center, and a seller in the CRM.

Every action goes through the simulators' real APIs (or their documented `/_sandbox/` control
routes where a human acts in a UI), never through our adapters, so a scenario tests the app and
not the app against itself. One seller driver per CRM, with the same CRM-neutral methods, so each
scenario is written once and runs against Salesforce and Dynamics 365.

Drivers remember the API calls they made themselves (`own_calls`), so the per-scenario call
counts can report what the app did, not what the test did.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import httpx

from sandbox.salesforce import SELLER_USERNAME
from shared.crm.dynamics import (
    HELP_NEEDED_OPTIONS,
    LEAD_DISQUALIFIED_STATUS,
    OPPORTUNITY_LOST_STATUS,
    OPPORTUNITY_WON_STATUS,
    REFERRAL_RESPONSE_OPTIONS,
    SYNC_STATUS_OPTIONS,
)
from shared.crm.dynamics_schema import load_schema
from shared.crm.port import CrmObjectKind
from shared.partner_center.contract import contract
from shared.settings import Settings

JsonDict = dict[str, Any]
SALESFORCE_API = "/services/data/v62.0"
SALESFORCE_DISQUALIFIED_LEAD_STATUS = "Closed - Not Converted"


@dataclass
class CallLog:
    """(system, method, path) of every API call a driver made itself."""

    calls: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, system: str, method: str, path: str) -> None:
        self.calls.append((system, method, path))


class SimulatorControl:
    """The `/_sandbox/` control API of one simulator (not part of any request log)."""

    def __init__(self, name: str, base_url: str, http: httpx.Client) -> None:
        self.name = name
        self.base_url = base_url
        self.http = http

    def state(self) -> JsonDict:
        response = self.http.get(f"{self.base_url}/_sandbox/state")
        response.raise_for_status()
        body: JsonDict = response.json()
        return body

    def requests(self) -> list[JsonDict]:
        response = self.http.get(f"{self.base_url}/_sandbox/requests")
        response.raise_for_status()
        entries: list[JsonDict] = response.json()["requests"]
        return entries

    def post(self, path: str, body: Any = None) -> JsonDict:
        response = self.http.post(f"{self.base_url}/_sandbox/{path}", json=body)
        if response.status_code >= 400:
            raise AssertionError(f"{self.name} control {path} answered {response.status_code}: {response.text}")
        return response.json() if response.content else {}

    def fault(self, **fault: Any) -> None:
        """`POST /_sandbox/faults` (method, path_prefix, status, count, ...)."""
        self.post("faults", fault)

    def clear_faults(self) -> None:
        self.http.delete(f"{self.base_url}/_sandbox/faults").raise_for_status()


def tag() -> str:
    """A short unique token: the simulators are shared by every scenario of the session."""
    return uuid.uuid4().hex[:8]


def unique(prefix: str) -> str:
    """A unique name (data per test instead of resets)."""
    return f"{prefix} {tag()}"


# ---- Partner Center: Microsoft and the partner's own users ------------------------------------------
class PartnerCenterDriver:
    def __init__(
        self,
        control: SimulatorControl,
        api_base_url: str,
        token: Callable[[], str],
        calls: CallLog,
    ) -> None:
        self.control = control
        self.api_base_url = api_base_url  # .../v1.0/engagements
        self._token = token
        self._calls = calls

    # Microsoft's side
    def share_referral(self, fields: JsonDict) -> JsonDict:
        """Microsoft shares a new referral with the partner (fires `referral-created`)."""
        return self.control.post("incoming-referral", fields)

    def as_microsoft(self, referral_id: str, operations: list[JsonDict]) -> JsonDict:
        return self.control.post(f"referrals/{referral_id}/as-microsoft", operations)

    def expire(self, referral_id: str) -> JsonDict:
        return self.control.post(f"referrals/{referral_id}/expire")

    def edit_after_next_read(self, referral_id: str, operations: list[JsonDict]) -> None:
        self.control.post(f"referrals/{referral_id}/edit-after-next-read", operations)

    def drop_webhooks(self, count: int) -> None:
        self.control.post("webhooks/drop", {"count": count})

    # The partner's users in the Partner Center UI (the real Referrals API with a delegated token)
    def edit(self, referral_id: str, operations: list[JsonDict]) -> JsonDict:
        current = self.referral(referral_id)
        path = f"{self.api_base_url}/referrals/{referral_id}"
        response = self.control.http.patch(
            path,
            json=operations,
            headers={
                "Authorization": f"Bearer {self._token()}",
                "If-Match": current["eTag"],
                "Prefer": "return=representation",
            },
        )
        self._calls.add("pc", "PATCH", httpx.URL(path).path)
        if response.status_code >= 400:
            raise AssertionError(f"Partner Center refused the partner's edit: {response.status_code} {response.text}")
        body: JsonDict = response.json()
        return body

    # Reading (control API: not in the request log)
    def referrals(self) -> list[JsonDict]:
        items: list[JsonDict] = self.control.state()["referrals"]
        return items

    def referral(self, referral_id: str) -> JsonDict:
        for item in self.referrals():
            if item["id"] == referral_id:
                return item
        raise AssertionError(f"Partner Center has no referral {referral_id}")

    def referrals_by_external_id(self, external_id: str) -> list[JsonDict]:
        return [item for item in self.referrals() if item.get("externalReferenceId") == external_id]


def pc_edit(path: str, value: Any, op: str = "replace") -> JsonDict:
    """A JSON Patch operation a Partner Center API caller may send (a path the contract lists)."""
    return contract().patch_operation(path, value, op)


def microsoft_edit(path: str, value: Any, op: str = "replace") -> JsonDict:
    """A change on Microsoft's side of an engagement: any member a referral has."""
    return contract().member_operation(path, value, op)


def cosell_referral(**overrides: Any) -> JsonDict:
    """A co-sell referral as Microsoft shares it, every member checked against the contract; the
    US state in `region` with `state` null, as real payloads carry it."""
    tag = uuid.uuid4().hex[:8]
    referral: JsonDict = {
        "name": f"Fabrikam {tag} - Azure migration",
        "customerProfile": {
            "name": f"Fabrikam {tag} Inc.",
            "address": {
                "addressLine1": "1 Microsoft Way",
                "city": "Redmond",
                "state": None,
                "region": "WA",
                "postalCode": f"98{tag[:3]}",
                "country": "US",
            },
            "team": [
                {
                    "firstName": "Avery",
                    "lastName": f"Nakamura{tag}",
                    "email": f"avery.{tag}@fabrikam.example",
                    "phoneNumber": "+1 425 555 0100",
                }
            ],
        },
        "consent": {"consentToShareReferralWithMicrosoftSellers": True},
        "details": {
            "notes": "Customer wants to move SAP workloads to Azure by Q2.",
            "dealValue": 250000.0,
            "currency": "USD",
            "closingDateTime": "2027-03-31T00:00:00Z",
            "requirements": {
                "solutions": [
                    {
                        "id": f"SOL-{tag}",
                        "name": "Contoso ERP Landing Zone",
                        "type": "Name",
                        "publisherName": "Contoso Consulting Ltd",
                    }
                ]
            },
        },
        "inviteContext": {"assistanceRequestCode": "CustomerTechnicalArchitecture"},
    }
    referral.update(overrides)
    contract().referral_document(referral)  # refuses a member Partner Center does not have
    return referral


# ---- the seller, CRM-neutral ------------------------------------------------------------------------
@dataclass(frozen=True)
class Account:
    name: str
    street: str = "Oudegracht 1"
    city: str = "Utrecht"
    state: str | None = None
    postal_code: str = "3511 AB"
    country: str | None = "NL"


@dataclass(frozen=True)
class Contact:
    first_name: str
    last_name: str
    email: str | None


@dataclass(frozen=True)
class Solution:
    solution_id: str
    name: str
    publisher: str = "Contoso Consulting Ltd"


@dataclass(frozen=True)
class RawRecord:
    """What a seller sees on the record in the CRM (raw, before any adapter): name WITH the mark."""

    id: str
    name: str
    sync_enabled: bool
    sync_status: str | None
    referral_id: str | None
    referral_link: str | None
    engagement_id: str | None
    referral_status: str | None
    microsoft_crm_id: str | None
    visible: bool
    audit: str
    closed: bool
    won: bool
    stage: str | None
    modified_by_seller: bool


class Seller(Protocol):
    """A seller working in the CRM (Salesforce or Dynamics 365), in CRM-neutral words."""

    kind: str

    def create_account(self, account: Account) -> str: ...
    def create_contact(self, contact: Contact, account_id: str) -> str: ...
    def create_opportunity(
        self,
        name: str,
        *,
        account_id: str,
        contact_ids: list[str],
        solutions: list[Solution],
        deal_value: Decimal | None,
        currency: str | None,
        close_date: dt.date | None,
        notes: str | None,
        help_needed: str | None,
        visible: bool,
        sync: bool = True,
    ) -> str: ...
    def update(self, kind: CrmObjectKind, record_id: str, **values: Any) -> None: ...
    def set_account_country(self, account_id: str, country: str) -> None: ...
    def add_contact(self, opportunity_id: str, contact_id: str) -> None: ...
    def add_solution(self, kind: CrmObjectKind, record_id: str, solution: Solution) -> None: ...
    def remove_solution(self, kind: CrmObjectKind, record_id: str, solution_id: str) -> None: ...
    def accept_by_stage(self, opportunity_id: str) -> None: ...
    def close(self, opportunity_id: str, *, won: bool) -> None: ...
    def qualify_lead(self, lead_id: str) -> str: ...
    def disqualify_lead(self, lead_id: str) -> None: ...
    def find(self, kind: CrmObjectKind, referral_id: str) -> list[RawRecord]: ...
    def raw(self, kind: CrmObjectKind, record_id: str) -> RawRecord: ...
    def records_named(self, kind: CrmObjectKind, name_prefix: str) -> list[RawRecord]: ...


# What a seller picks from the FY26 taxonomy on a co-sell (shared/partner_center/taxonomy): Partner Center
# refuses a new co-sell without them.
COSELL_TAXONOMY = {
    "solution_area": "Cloud and AI Platforms",
    "solution_play": "Migrate and Modernize your Estate",
    "partner_role": "Implementation",
}


def _taxonomy_for(help_needed: str | None) -> dict[str, str]:
    return COSELL_TAXONOMY if help_needed not in (None, "Unknown") else {}


# Neutral field names the scenarios use -> each CRM's field.
_SALESFORCE_FIELDS = {
    "name": "Name",
    "deal_value": "Amount",
    "currency": "CurrencyIsoCode",
    "close_date": "CloseDate",
    "notes": "Description",
    "sync": "PCS_Sync_With_Partner_Center__c",
    "help_needed": "PCS_Help_Needed__c",
    "solution_area": "PCS_Solution_Area__c",
    "solution_play": "PCS_Solution_Play__c",
    "partner_role": "PCS_Partner_Role__c",
    "visible": "PCS_Visible_To_Microsoft__c",
    "referral_response": "PCS_Referral_Response__c",
    "decline_reason": "PCS_Decline_Reason__c",
    "referral_id": "PCS_Referral_Id__c",
    "stage": "StageName",
}


class SalesforceSeller:
    """Sally Seller, through the Salesforce REST API with her own session."""

    kind = "salesforce"

    def __init__(self, control: SimulatorControl, settings: Settings, calls: CallLog, *, multi_currency: bool) -> None:
        self.control = control
        self.settings = settings
        self.calls = calls
        self.multi_currency = multi_currency
        session = control.post("sessions", {"username": SELLER_USERNAME})
        self._token = str(session["access_token"])
        self.user_id = str(session["user_id"])

    def _request(self, method: str, path: str, body: JsonDict | None = None) -> JsonDict:
        url = f"{self.control.base_url}{SALESFORCE_API}/{path}"
        response = self.control.http.request(method, url, json=body, headers={"Authorization": f"Bearer {self._token}"})
        self.calls.add("crm", method, httpx.URL(url).path)
        if response.status_code >= 400:
            raise AssertionError(f"Salesforce refused the seller's {method} {path}: {response.text}")
        return response.json() if response.content else {}

    def _create(self, sobject: str, values: JsonDict) -> str:
        return str(self._request("POST", f"sobjects/{sobject}", values)["id"])

    def _fields(self, values: dict[str, Any]) -> JsonDict:
        out: JsonDict = {}
        for name, value in values.items():
            if name == "currency" and not self.multi_currency:
                continue  # a single-currency org has no CurrencyIsoCode
            if isinstance(value, Decimal):
                value = float(value)
            elif isinstance(value, dt.date):
                value = value.isoformat()
            out[_SALESFORCE_FIELDS[name]] = value
        return out

    def create_account(self, account: Account) -> str:
        return self._create(
            "Account",
            {
                "Name": account.name,
                "BillingStreet": account.street,
                "BillingCity": account.city,
                "BillingState": account.state,
                "BillingPostalCode": account.postal_code,
                self.settings.account_country_field: account.country,
            },
        )

    def create_contact(self, contact: Contact, account_id: str) -> str:
        values = {"FirstName": contact.first_name, "LastName": contact.last_name, "Email": contact.email}
        return self._create("Contact", {**values, "AccountId": account_id})

    def create_opportunity(
        self,
        name: str,
        *,
        account_id: str,
        contact_ids: list[str],
        solutions: list[Solution],
        deal_value: Decimal | None,
        currency: str | None,
        close_date: dt.date | None,
        notes: str | None,
        help_needed: str | None,
        visible: bool,
        sync: bool = True,
    ) -> str:
        # Children first, Sync = Yes last: the poller must see a complete record, as a careful seller leaves it.
        values = self._fields(
            {
                "name": name,
                "deal_value": deal_value,
                "currency": currency,
                "close_date": close_date or dt.date(2027, 6, 30),  # CloseDate is required in Salesforce
                "notes": notes,
                "help_needed": help_needed,
                **_taxonomy_for(help_needed),
                "visible": visible,
                "stage": self.settings.salesforce_active_stage,
            }
        )
        if deal_value is not None and self.settings.deal_value_field != "Amount":
            values[self.settings.deal_value_field] = values.pop("Amount")
        opportunity_id = self._create("Opportunity", {**values, "AccountId": account_id})
        for index, contact_id in enumerate(contact_ids):
            self.add_contact(opportunity_id, contact_id, primary=index == 0)
        for solution in solutions:
            self.add_solution("opportunity", opportunity_id, solution)
        if sync:
            self.update("opportunity", opportunity_id, sync=True)
        return opportunity_id

    def update(self, kind: CrmObjectKind, record_id: str, **values: Any) -> None:
        sobject = "Opportunity" if kind == "opportunity" else "Lead"
        fields = self._fields(values)
        if "Amount" in fields and self.settings.deal_value_field != "Amount" and kind == "opportunity":
            fields[self.settings.deal_value_field] = fields.pop("Amount")
        self._request("PATCH", f"sobjects/{sobject}/{record_id}", fields)

    def set_account_country(self, account_id: str, country: str) -> None:
        self._request("PATCH", f"sobjects/Account/{account_id}", {self.settings.account_country_field: country})

    def add_contact(self, opportunity_id: str, contact_id: str, *, primary: bool = False) -> None:
        values = {"OpportunityId": opportunity_id, "ContactId": contact_id, "IsPrimary": primary}
        self._create("OpportunityContactRole", values)

    def add_solution(self, kind: CrmObjectKind, record_id: str, solution: Solution) -> None:
        parent = "PCS_Opportunity__c" if kind == "opportunity" else "PCS_Lead__c"
        self._create(
            "PCS_Solution__c",
            {
                "Name": solution.name,
                parent: record_id,
                "PCS_Solution_Id__c": solution.solution_id,
                "PCS_Publisher__c": solution.publisher,
            },
        )

    def remove_solution(self, kind: CrmObjectKind, record_id: str, solution_id: str) -> None:
        parent = "PCS_Opportunity__c" if kind == "opportunity" else "PCS_Lead__c"
        rows = self._objects("PCS_Solution__c")
        found = [row["Id"] for row in rows if row.get(parent) == record_id and row["PCS_Solution_Id__c"] == solution_id]
        assert found, f"no solution {solution_id} on {record_id}"
        self._request("DELETE", f"sobjects/PCS_Solution__c/{found[0]}")

    def accept_by_stage(self, opportunity_id: str) -> None:
        self.update("opportunity", opportunity_id, stage=self.settings.salesforce_active_stage)

    def close(self, opportunity_id: str, *, won: bool) -> None:
        stage = self.settings.salesforce_won_stage if won else self.settings.salesforce_lost_stage
        self.update("opportunity", opportunity_id, stage=stage)

    def qualify_lead(self, lead_id: str) -> str:
        result = self.control.post(f"convert-lead/{lead_id}")
        return str(result.get("opportunityId") or result.get("OpportunityId"))

    def disqualify_lead(self, lead_id: str) -> None:
        self._request("PATCH", f"sobjects/Lead/{lead_id}", {"Status": SALESFORCE_DISQUALIFIED_LEAD_STATUS})

    # reading (control API)
    def _objects(self, sobject: str) -> list[JsonDict]:
        rows: list[JsonDict] = self.control.state()["objects"].get(sobject, [])
        return rows

    def _view(self, kind: CrmObjectKind, row: JsonDict) -> RawRecord:
        closed = kind == "opportunity" and row.get("StageName") in (
            self.settings.salesforce_won_stage,
            self.settings.salesforce_lost_stage,
        )
        if kind == "lead":
            closed = bool(row.get("IsConverted")) or row.get("Status") == SALESFORCE_DISQUALIFIED_LEAD_STATUS
        return RawRecord(
            id=str(row["Id"]),
            name=str(row.get("Name" if kind == "opportunity" else "Company") or ""),  # a lead's name is its Company
            sync_enabled=bool(row.get("PCS_Sync_With_Partner_Center__c")),
            sync_status=row.get("PCS_Sync_Status__c"),
            referral_id=row.get("PCS_Referral_Id__c"),
            referral_link=row.get("PCS_Referral_Link__c"),
            engagement_id=row.get("PCS_Engagement_Id__c"),
            referral_status=row.get("PCS_Referral_Status__c"),
            microsoft_crm_id=row.get("PCS_Microsoft_CRM_Id__c"),
            visible=bool(row.get("PCS_Visible_To_Microsoft__c")),
            audit=str(row.get("PCS_Audit__c") or ""),
            closed=closed,
            won=kind == "opportunity" and row.get("StageName") == self.settings.salesforce_won_stage,
            stage=row.get("StageName") if kind == "opportunity" else row.get("Status"),
            modified_by_seller=row.get("LastModifiedById") == self.user_id,
        )

    def find(self, kind: CrmObjectKind, referral_id: str) -> list[RawRecord]:
        rows = self._objects("Opportunity" if kind == "opportunity" else "Lead")
        return [self._view(kind, row) for row in rows if row.get("PCS_Referral_Id__c") == referral_id]

    def raw(self, kind: CrmObjectKind, record_id: str) -> RawRecord:
        rows = self._objects("Opportunity" if kind == "opportunity" else "Lead")
        for row in rows:
            if row["Id"] == record_id:
                return self._view(kind, row)
        raise AssertionError(f"Salesforce has no {kind} {record_id}")

    def records_named(self, kind: CrmObjectKind, name_prefix: str) -> list[RawRecord]:
        rows = self._objects("Opportunity" if kind == "opportunity" else "Lead")
        return [view for view in (self._view(kind, row) for row in rows) if view.name.startswith(name_prefix)]


_DATAVERSE_COLUMNS = {
    "name": "name",
    "deal_value": "estimatedvalue",
    "close_date": "estimatedclosedate",
    "notes": "description",
    "sync": "pcs_syncwithpartnercenter",
    "help_needed": "pcs_helpneeded",
    "solution_area": "pcs_solutionarea",
    "solution_play": "pcs_solutionplay",
    "partner_role": "pcs_partnerrole",
    "visible": "pcs_visibletomicrosoft",
    "referral_response": "pcs_referralresponse",
    "decline_reason": "pcs_declinereason",
    "referral_id": "pcs_referralid",
}


def _dataverse_option(column: str, label: str) -> int:
    (found,) = (item for item in load_schema().table("opportunity").columns if item.logical_name == column)
    return next(option.value for option in found.options if option.label == label)


class DynamicsSeller:
    """The demo seller of the sandbox Dataverse (its `/_sandbox/seller/...` routes write as that human user)."""

    kind = "dynamics"

    def __init__(self, control: SimulatorControl, settings: Settings, calls: CallLog) -> None:
        self.control = control
        self.settings = settings
        self.calls = calls

    def _write(self, method: str, path: str, body: JsonDict | None = None) -> JsonDict:
        response = self.control.http.request(method, f"{self.control.base_url}/_sandbox/seller/{path}", json=body)
        if response.status_code >= 400:
            raise AssertionError(f"Dataverse refused the seller's {method} {path}: {response.text}")
        return response.json() if response.content else {}

    def _currency_id(self, iso_code: str) -> str:
        for row in self._rows("transactioncurrencies"):
            if row.get("isocurrencycode") == iso_code:
                return str(row["transactioncurrencyid"])
        raise AssertionError(f"the sandbox Dataverse has no currency {iso_code}")

    def _columns(self, kind: CrmObjectKind, values: dict[str, Any]) -> JsonDict:
        out: JsonDict = {}
        for name, value in values.items():
            if name == "currency":
                if self.settings.deal_currency_field == "transactioncurrencyid":
                    out["transactioncurrencyid@odata.bind"] = (
                        f"/transactioncurrencies({self._currency_id(value)})" if value else None
                    )
                else:
                    out[self.settings.deal_currency_field] = value
                continue
            if name == "help_needed":
                value = HELP_NEEDED_OPTIONS[value] if value else None
            elif name == "referral_response":
                value = REFERRAL_RESPONSE_OPTIONS[value] if value else None
            elif name in COSELL_TAXONOMY:
                value = _dataverse_option(_DATAVERSE_COLUMNS[name], value) if value else None
            elif isinstance(value, Decimal):
                value = float(value)
            elif isinstance(value, dt.date):
                value = value.isoformat()
            column = _DATAVERSE_COLUMNS[name]
            if name == "name" and kind == "lead":
                column = "subject"
            elif name == "deal_value":
                column = self.settings.deal_value_field if kind == "opportunity" else "estimatedamount"
            out[column] = value
        return out

    def create_account(self, account: Account) -> str:
        body = {
            "name": account.name,
            "address1_line1": account.street,
            "address1_city": account.city,
            "address1_stateorprovince": account.state,
            "address1_postalcode": account.postal_code,
            self.settings.account_country_field: account.country,
        }
        return str(self._write("POST", "accounts", body)["accountid"])

    def create_contact(self, contact: Contact, account_id: str) -> str:
        body = {
            "firstname": contact.first_name,
            "lastname": contact.last_name,
            "emailaddress1": contact.email,
            "parentcustomerid_account@odata.bind": f"/accounts({account_id})",
        }
        return str(self._write("POST", "contacts", body)["contactid"])

    def create_opportunity(
        self,
        name: str,
        *,
        account_id: str,
        contact_ids: list[str],
        solutions: list[Solution],
        deal_value: Decimal | None,
        currency: str | None,
        close_date: dt.date | None,
        notes: str | None,
        help_needed: str | None,
        visible: bool,
        sync: bool = True,
    ) -> str:
        values = self._columns(
            "opportunity",
            {
                "name": name,
                "deal_value": deal_value,
                "close_date": close_date,
                "notes": notes,
                "help_needed": help_needed,
                **_taxonomy_for(help_needed),
                "visible": visible,
                **({"currency": currency} if currency else {}),
            },
        )
        body = {
            **values,
            "parentaccountid@odata.bind": f"/accounts({account_id})",
            "customerid_account@odata.bind": f"/accounts({account_id})",
        }
        if contact_ids:
            body["parentcontactid@odata.bind"] = f"/contacts({contact_ids[0]})"
        opportunity_id = str(self._write("POST", "opportunities", body)["opportunityid"])
        for contact_id in contact_ids[1:]:
            self.add_contact(opportunity_id, contact_id)
        for solution in solutions:
            self.add_solution("opportunity", opportunity_id, solution)
        if sync:
            self.update("opportunity", opportunity_id, sync=True)
        return opportunity_id

    def update(self, kind: CrmObjectKind, record_id: str, **values: Any) -> None:
        entity_set = "opportunities" if kind == "opportunity" else "leads"
        self._write("PATCH", f"{entity_set}/{record_id}", self._columns(kind, values))

    def set_account_country(self, account_id: str, country: str) -> None:
        self._write("PATCH", f"accounts/{account_id}", {self.settings.account_country_field: country})

    def add_contact(self, opportunity_id: str, contact_id: str) -> None:
        role = next(row for row in self._rows("connectionroles") if row.get("name") == "Stakeholder")
        self._write(
            "POST",
            "connections",
            {
                "record1id_opportunity@odata.bind": f"/opportunities({opportunity_id})",
                "record2id_contact@odata.bind": f"/contacts({contact_id})",
                "record2roleid@odata.bind": f"/connectionroles({role['connectionroleid']})",
            },
        )

    def add_solution(self, kind: CrmObjectKind, record_id: str, solution: Solution) -> None:
        entity_set = "opportunities" if kind == "opportunity" else "leads"
        self._write(
            "POST",
            "pcs_partnercentersolutions",
            {
                "pcs_name": solution.name,
                "pcs_solutionid": solution.solution_id,
                "pcs_publisher": solution.publisher,
                f"pcs_{kind}id@odata.bind": f"/{entity_set}({record_id})",
            },
        )

    def remove_solution(self, kind: CrmObjectKind, record_id: str, solution_id: str) -> None:
        rows = self._rows("pcs_partnercentersolutions")
        found = [
            row["pcs_partnercentersolutionid"]
            for row in rows
            if row.get(f"pcs_{kind}id") == record_id and row.get("pcs_solutionid") == solution_id
        ]
        assert found, f"no solution {solution_id} on {record_id}"
        self._write("DELETE", f"pcs_partnercentersolutions/{found[0]}")

    def accept_by_stage(self, opportunity_id: str) -> None:
        raise NotImplementedError("Dynamics 365 has no pending stage: accept with Referral response = Accept")

    def close(self, opportunity_id: str, *, won: bool) -> None:
        action = "WinOpportunity" if won else "LoseOpportunity"
        self._write(
            "POST",
            f"actions/{action}",
            {
                "Status": OPPORTUNITY_WON_STATUS if won else OPPORTUNITY_LOST_STATUS,
                "OpportunityClose": {
                    "subject": "Won by the seller" if won else "Lost by the seller",
                    "opportunityid@odata.bind": f"/opportunities({opportunity_id})",
                },
            },
        )

    def qualify_lead(self, lead_id: str) -> str:
        result = self._write(
            "POST",
            f"leads/{lead_id}/QualifyLead",
            {"CreateAccount": True, "CreateContact": True, "CreateOpportunity": True, "Status": 3},
        )
        created = [item["opportunityid"] for item in result["value"] if "opportunityid" in item]
        assert created, f"QualifyLead created no opportunity: {result}"
        return str(created[0])

    def disqualify_lead(self, lead_id: str) -> None:
        self._write("PATCH", f"leads/{lead_id}", {"statecode": 2, "statuscode": LEAD_DISQUALIFIED_STATUS})

    # reading (control API)
    def _rows(self, entity_set: str) -> list[JsonDict]:
        rows: list[JsonDict] = self.control.state()["records"].get(entity_set, [])
        return rows

    @staticmethod
    def _view(kind: CrmObjectKind, row: JsonDict) -> RawRecord:
        status = {value: label for label, value in SYNC_STATUS_OPTIONS.items()}.get(row.get("pcs_syncstatus") or -1)
        return RawRecord(
            id=str(row[f"{kind}id"]),
            name=str(row.get("name" if kind == "opportunity" else "subject") or ""),
            sync_enabled=bool(row.get("pcs_syncwithpartnercenter")),
            sync_status=status,
            referral_id=row.get("pcs_referralid"),
            referral_link=row.get("pcs_referrallink"),
            engagement_id=row.get("pcs_engagementid"),
            referral_status=row.get("pcs_referralstatus"),
            microsoft_crm_id=row.get("pcs_microsoftcrmid"),
            visible=bool(row.get("pcs_visibletomicrosoft")),
            audit=str(row.get("pcs_audit") or ""),
            closed=row.get("statecode") in (1, 2),
            won=kind == "opportunity" and row.get("statecode") == 1,
            stage=str(row.get("statecode")),
            modified_by_seller=str(row.get("modifiedby") or "").startswith("5e11e400"),
        )

    def find(self, kind: CrmObjectKind, referral_id: str) -> list[RawRecord]:
        rows = self._rows("opportunities" if kind == "opportunity" else "leads")
        return [self._view(kind, row) for row in rows if row.get("pcs_referralid") == referral_id]

    def raw(self, kind: CrmObjectKind, record_id: str) -> RawRecord:
        for row in self._rows("opportunities" if kind == "opportunity" else "leads"):
            if str(row[f"{kind}id"]) == record_id:
                return self._view(kind, row)
        raise AssertionError(f"Dataverse has no {kind} {record_id}")

    def records_named(self, kind: CrmObjectKind, name_prefix: str) -> list[RawRecord]:
        column = "name" if kind == "opportunity" else "subject"
        rows = self._rows("opportunities" if kind == "opportunity" else "leads")
        return [self._view(kind, row) for row in rows if str(row.get(column) or "").startswith(name_prefix)]


__all__ = [
    "Account",
    "CallLog",
    "Contact",
    "DynamicsSeller",
    "PartnerCenterDriver",
    "RawRecord",
    "SalesforceSeller",
    "Seller",
    "SimulatorControl",
    "Solution",
    "cosell_referral",
    "tag",
    "unique",
]
