"""The Dynamics 365 (Dataverse Web API) adapter of the CRM port.

Wire contract: crm-apis.md part B. Choices made here, and why:
- Upserts go to the alternate-key URL `opportunities(pcs_referralid='...')` without `If-Match`
  (that *is* the upsert); every other update sends `If-Match: *` (or the row's etag for
  read-modify-write fields such as the audit), so a PATCH on a deleted record fails with 404
  instead of silently re-creating it.
- Polling (`changed_since`) uses `modifiedon ge <whole second>` ordered by `modifiedon, id`, paged
  with `odata.maxpagesize` + `@odata.nextLink`; the poller (shared/sync/polling.py) picks the
  window from the `modifiedon` values Dataverse returned, never from our clock. With
  DATAVERSE_CHANGE_TRACKING=true it follows delta links instead (the position is then a JSON
  object of one delta link per table); an expired or rejected delta link falls back to a full read.
- One `read` is two calls: the record with its account, primary contact, currency and solutions
  (`$expand`), and its stakeholder connections (the other contacts).
- Multi-record writes (solutions, connections) go in one `$batch` change set: all or nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import threading
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from shared.crm.dynamics_http import (
    BatchPart,
    DataverseConflictError,
    DataverseHttp,
    JsonDict,
    entity_id_of,
    odata_string,
)
from shared.crm.dynamics_schema import taxonomy_options
from shared.crm.port import (
    SYNC_MARK_FAILED,
    SYNC_MARK_OK,
    ChangedRecord,
    ChangedRecords,
    ConnectorFields,
    CrmAccount,
    CrmCapabilities,
    CrmContact,
    CrmError,
    CrmNotFoundError,
    CrmObjectKind,
    CrmRecord,
    CrmRef,
    CrmSolution,
    CrmValidationError,
    RecordUpdate,
    StageFacts,
    SyncStatus,
    UpsertResult,
    strip_sync_mark,
    with_sync_mark,
)
from shared.mapping.taxonomy import Kind, taxonomy
from shared.settings import Settings

# Option values of the connector's choices (crm_schema/dynamics/schema.json; a test keeps them equal).
HELP_NEEDED_OPTIONS = {
    "Unknown": 727000000,
    "GeneralOrOther": 727000001,
    "CustomerTechnicalArchitecture": 727000002,
    "ProofOfConceptOrDemo": 727000003,
    "QuotesOrLicensing": 727000004,
    "PostSalesCustomerSuccess": 727000005,
    "WorkloadSpecificValueProposition": 727000006,
}
REFERRAL_RESPONSE_OPTIONS = {"Accept": 727000000, "Decline": 727000001}
SYNC_STATUS_OPTIONS = {"Synced": 727000000, "Error": 727000001, "Pending": 727000002}
MARKETPLACE_INTENT_OPTIONS = {"HaveNotDecided": 727000000, "Yes": 727000001, "No": 727000002}
AUDIT_MAX_LENGTH = 20000  # pcs_audit MaxLength in the schema

# Standard status values (crm-apis.md B2): opportunity Won 3 / Lost 4 (Canceled); lead Disqualified 7 (Canceled).
OPPORTUNITY_WON_STATUS = 3
OPPORTUNITY_LOST_STATUS = 4
LEAD_DISQUALIFIED_STATUS = 7
LEAD_STATUS_LABELS = {
    1: "New",
    2: "Contacted",
    3: "Qualified",
    4: "Lost",
    5: "Cannot Contact",
    6: "No Longer Interested",
    7: "Canceled",
}
STAKEHOLDER_ROLE = "Stakeholder"
DEFAULT_OVERLAP = dt.timedelta(minutes=2)
FORMATTED = "@OData.Community.Display.V1.FormattedValue"

CONNECTOR_COLUMNS = {
    "sync_enabled": "pcs_syncwithpartnercenter",
    "referral_id": "pcs_referralid",
    "referral_link": "pcs_referrallink",
    "engagement_id": "pcs_engagementid",
    "help_needed": "pcs_helpneeded",
    "visible_to_microsoft": "pcs_visibletomicrosoft",
    "referral_response": "pcs_referralresponse",
    "decline_reason": "pcs_declinereason",
    "referral_status": "pcs_referralstatus",
    "microsoft_crm_id": "pcs_microsoftcrmid",
    "solution_area": "pcs_solutionarea",
    "solution_play": "pcs_solutionplay",
    "partner_role": "pcs_partnerrole",
    "marketplace_intent": "pcs_marketplaceintent",
    "sync_status": "pcs_syncstatus",
    "last_synced": "pcs_lastsynced",
    "audit": "pcs_audit",
}
LEAD_COLUMNS = {
    "lead_company": "companyname",
    "lead_first_name": "firstname",
    "lead_last_name": "lastname",
    "lead_email": "emailaddress1",
    "lead_phone": "telephone1",
    "lead_street": "address1_line1",
    "lead_city": "address1_city",
    "lead_state": "address1_stateorprovince",
    "lead_postal_code": "address1_postalcode",
    "lead_country": "address1_country",
}
"""A lead's own company and contact columns (neutral `RecordUpdate` names)."""
_CHOICES: dict[str, dict[str, int]] = {
    "pcs_helpneeded": HELP_NEEDED_OPTIONS,
    "pcs_referralresponse": REFERRAL_RESPONSE_OPTIONS,
    "pcs_syncstatus": SYNC_STATUS_OPTIONS,
    "pcs_marketplaceintent": MARKETPLACE_INTENT_OPTIONS,
}
OPTION_VALUE_PREFIX = 72700  # the publisher's (schema.json); a test keeps them equal
_TAXONOMY_CHOICES: dict[str, Kind] = {
    "pcs_solutionarea": "solution_area",
    "pcs_solutionplay": "solution_play",
    "pcs_partnerrole": "partner_role",
}
"""Choices whose options are the co-sell taxonomy's (shared/partner_center/taxonomy), numbered as
provisioning numbers them; computed on first use (the deployed app has no crm_schema folder)."""


@functools.cache
def choice_options(column: str) -> dict[str, int]:
    if column in _TAXONOMY_CHOICES:
        options = taxonomy_options(taxonomy(), _TAXONOMY_CHOICES[column], OPTION_VALUE_PREFIX)
        return {str(option["label"]): int(option["value"]) for option in options}  # type: ignore[call-overload]
    return _CHOICES[column]


class _Kind:
    """Per-table names: entity set, primary id and name columns, solution relationship."""

    def __init__(self, kind: CrmObjectKind) -> None:
        self.kind = kind
        self.entity_set = "opportunities" if kind == "opportunity" else "leads"
        self.id_column = f"{kind}id"
        self.name_column = "name" if kind == "opportunity" else "subject"
        self.solutions_navigation = f"pcs_{kind}_pcs_partnercentersolution"
        self.solution_lookup = f"pcs_{kind}id"

    def url(self, record_id: str) -> str:
        return f"{self.entity_set}({record_id})"


_LEAD_ADDRESS_COLUMNS = (
    "address1_line1",
    "address1_city",
    "address1_stateorprovince",
    "address1_postalcode",
    "address1_country",
)
"""A lead carries its company's address itself (there is no account yet)."""

KINDS: dict[CrmObjectKind, _Kind] = {"opportunity": _Kind("opportunity"), "lead": _Kind("lead")}
_ACCOUNT_COLUMNS = ("name", "address1_line1", "address1_city", "address1_stateorprovince", "address1_postalcode")
_CONTACT_COLUMNS = ("contactid", "firstname", "lastname", "emailaddress1", "telephone1", "jobtitle")
_SOLUTION_COLUMNS = ("pcs_partnercentersolutionid", "pcs_name", "pcs_solutionid", "pcs_publisher", "pcs_solutiontype")


def _choice_label(column: str, value: Any) -> str | None:
    if value is None:
        return None
    for label, option in choice_options(column).items():
        if option == value:
            return label
    return None


def _choice_value(column: str, label: str | None) -> int | None:
    if label is None:
        return None
    try:
        return choice_options(column)[label]
    except KeyError as error:
        raise CrmValidationError(
            f"{label!r} is not a valid value of {column}; expected one of {', '.join(choice_options(column))}",
            fields=[column],
        ) from error


def _parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _parse_date(value: Any) -> dt.date | None:
    # DateOnly columns read as "2024-05-01"; UserLocal ones as a datetime (crm-apis.md open question 7).
    return dt.date.fromisoformat(str(value)[:10]) if value else None


def _note(changes: set[ChangedRecord], kind: CrmObjectKind, record_id: Any, modified: Any) -> None:
    stamp = _parse_time(modified)
    if record_id and stamp is not None:
        changes.add(ChangedRecord(ref=CrmRef(kind=kind, id=str(record_id).lower()), stamp=stamp))


def _oldest_first(changes: set[ChangedRecord]) -> list[ChangedRecord]:
    return sorted(changes, key=lambda change: (change.stamp, change.ref.kind, change.ref.id))


def _wire_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DynamicsCrm:
    """`CrmPort` on the Dataverse Web API (httpx + MSAL client credentials as an application user)."""

    kind = "dynamics"

    def __init__(
        self,
        settings: Settings,
        *,
        http: DataverseHttp | None = None,
        page_size: int = 500,
        poll_overlap: dt.timedelta = DEFAULT_OVERLAP,
    ) -> None:
        self.settings = settings
        # No pending stage: an open opportunity waits for the referral response field.
        self.capabilities = CrmCapabilities()
        self.http = http or DataverseHttp(settings)
        self.page_size = page_size
        self.poll_overlap = poll_overlap
        self._currency_ids: dict[str, str] = {}
        self._currency_codes: dict[str, str] = {}
        self._owner_emails: dict[str, str | None] = {}
        self._own_user_id: str | None = None
        self._stakeholder_role_id: str | None = None
        self._lock = threading.Lock()

    # ---- bookkeeping ---------------------------------------------------------------------------------
    def api_call_counts(self) -> Mapping[str, int]:
        return dict(self.http.call_counts)

    def own_user_id(self) -> str:
        """The application user's systemuserid (WhoAmI, once): `_modifiedby_value` of our own writes."""
        if self._own_user_id is None:
            self._own_user_id = str(self.http.get_json("whoami", "WhoAmI")["UserId"]).lower()
        return self._own_user_id

    # ---- changed records -------------------------------------------------------------------------------
    def changed_since(self, since: dt.datetime | None, *, position: str | None = None) -> ChangedRecords:
        if self.settings.dataverse_change_tracking:
            return self._changed_by_delta(position)
        changes: set[ChangedRecord] = set()
        # `since` is a whole second, like `modifiedon` in payloads: a row shown at that second or
        # later is returned, whether Dataverse keeps milliseconds behind it or not.
        for kind, spec in KINDS.items():
            conditions = ["pcs_syncwithpartnercenter eq true"]
            if since is not None:
                conditions.append(f"modifiedon ge {_wire_time(since)}")
            rows, _ = self.http.get_all(
                "changed_records",
                spec.entity_set,
                params={
                    "$select": f"{spec.id_column},modifiedon",
                    "$filter": " and ".join(conditions),
                    "$orderby": f"modifiedon asc,{spec.id_column} asc",
                },
                page_size=self.page_size,
            )
            for row in rows:
                _note(changes, kind, row.get(spec.id_column), row.get("modifiedon"))
        self._child_changes(since, changes)
        return ChangedRecords(changes=_oldest_first(changes))

    def _child_changes(self, since: dt.datetime | None, changes: set[ChangedRecord]) -> None:
        """Solutions changed since `since`, reported as their parent (when it has Sync = Yes)."""
        params = {
            "$select": "pcs_partnercentersolutionid,modifiedon",
            "$expand": "pcs_opportunityid($select=opportunityid,pcs_syncwithpartnercenter),"
            "pcs_leadid($select=leadid,pcs_syncwithpartnercenter)",
            "$orderby": "modifiedon asc,pcs_partnercentersolutionid asc",
        }
        if since is not None:
            params["$filter"] = f"modifiedon ge {_wire_time(since)}"
        rows, _ = self.http.get_all(
            "changed_records", "pcs_partnercentersolutions", params=params, page_size=self.page_size
        )
        for row in rows:
            for kind in KINDS:
                parent = row.get(f"pcs_{kind}id")
                if isinstance(parent, dict) and parent.get("pcs_syncwithpartnercenter"):
                    _note(changes, kind, parent.get(f"{kind}id"), row.get("modifiedon"))

    def _changed_by_delta(self, position: str | None) -> ChangedRecords:
        links: dict[str, str] = json.loads(position) if position else {}
        changes: set[ChangedRecord] = set()
        next_links: dict[str, str] = {}
        tables: list[tuple[str, str, str]] = [
            (kind, spec.entity_set, f"{spec.id_column},pcs_syncwithpartnercenter,modifiedon")
            for kind, spec in KINDS.items()
        ]
        tables.append(
            ("solution", "pcs_partnercentersolutions", "_pcs_opportunityid_value,_pcs_leadid_value,modifiedon")
        )
        for name, entity_set, select in tables:
            rows, last = self._delta_rows(entity_set, select, links.get(name))
            next_links[name] = str(last.get("@odata.deltaLink") or links.get(name) or "")
            for row in rows:
                if row.get("reason") == "deleted":
                    continue  # a deleted row has nothing left to sync
                if name == "solution":
                    for kind in KINDS:
                        _note(changes, kind, row.get(f"_pcs_{kind}id_value"), row.get("modifiedon"))
                elif row.get("pcs_syncwithpartnercenter"):
                    row_kind: CrmObjectKind = "opportunity" if name == "opportunity" else "lead"
                    _note(changes, row_kind, row.get(KINDS[row_kind].id_column), row.get("modifiedon"))
        return ChangedRecords(changes=_oldest_first(changes), position=json.dumps(next_links, sort_keys=True))

    def _delta_rows(self, entity_set: str, select: str, delta_link: str | None) -> tuple[list[JsonDict], JsonDict]:
        if delta_link:
            try:
                return self._follow_delta(delta_link)
            except CrmValidationError:
                pass  # expired / rejected token (older than ExpireChangeTrackingInDays): start over with a full read
        return self.http.get_all(
            "changed_records",
            entity_set,
            params={"$select": select},
            page_size=self.page_size,
            prefer="odata.track-changes",
        )

    def _follow_delta(self, delta_link: str) -> tuple[list[JsonDict], JsonDict]:
        return self.http.get_all("changed_records", delta_link, page_size=self.page_size, prefer="odata.track-changes")

    # ---- read ------------------------------------------------------------------------------------------
    def read(self, ref: CrmRef) -> CrmRecord:
        spec = KINDS[ref.kind]
        select = [
            spec.name_column,
            "statecode",
            "statuscode",
            "modifiedon",
            "_modifiedby_value",
            "_ownerid_value",
            "description",
            "estimatedclosedate",
            *CONNECTOR_COLUMNS.values(),
        ]
        deal_value_field = self._deal_value_field(ref.kind)
        select.append(deal_value_field)
        currency_field = self.settings.deal_currency_field
        if currency_field != "transactioncurrencyid":
            select.append(currency_field)
        if ref.kind == "opportunity":
            select.append("stepname")
        else:
            select += [
                "_qualifyingopportunityid_value",
                "companyname",
                "firstname",
                "lastname",
                "emailaddress1",
                "telephone1",
                *_LEAD_ADDRESS_COLUMNS,
            ]
        account_select = ",".join(dict.fromkeys([*_ACCOUNT_COLUMNS, self.settings.account_country_field]))
        expand = [
            f"parentaccountid($select={account_select})",
            f"parentcontactid($select={','.join(_CONTACT_COLUMNS)})",
            "transactioncurrencyid($select=isocurrencycode)",
            f"{spec.solutions_navigation}($select={','.join(_SOLUTION_COLUMNS)})",
        ]
        row = self.http.get_json(
            "read",
            spec.url(ref.id),
            params={"$select": ",".join(dict.fromkeys(select)), "$expand": ",".join(expand)},
            headers={"Prefer": f'odata.include-annotations="{FORMATTED[1:]}"'},
        )
        return self._record(ref, row, self._stakeholders(ref) if ref.kind == "opportunity" else [])

    def _deal_value_field(self, kind: CrmObjectKind) -> str:
        return self.settings.deal_value_field if kind == "opportunity" else "estimatedamount"

    def _stakeholders(self, ref: CrmRef) -> list[CrmContact]:
        rows, _ = self.http.get_all(
            "read",
            "connections",
            params={
                "$select": "connectionid,_record2id_value",
                "$filter": f"_record1id_value eq {ref.id} and _record2roleid_value eq {self._stakeholder_role()}",
                "$expand": f"record2id_contact($select={','.join(_CONTACT_COLUMNS)})",
                "$orderby": "createdon asc",
            },
            page_size=self.page_size,
        )
        return [_contact(row["record2id_contact"]) for row in rows if isinstance(row.get("record2id_contact"), dict)]

    def _record(self, ref: CrmRef, row: JsonDict, stakeholders: list[CrmContact]) -> CrmRecord:
        spec = KINDS[ref.kind]
        account_row = row.get("parentaccountid")
        account = None
        if isinstance(account_row, dict):
            account = CrmAccount(
                id=str(account_row["accountid"]),
                name=str(account_row.get("name") or "(no name)"),
                street=account_row.get("address1_line1"),
                city=account_row.get("address1_city"),
                state=account_row.get("address1_stateorprovince"),
                postal_code=account_row.get("address1_postalcode"),
                country=account_row.get(self.settings.account_country_field),
            )
        elif ref.kind == "lead" and row.get("companyname"):
            street, city, state, postal_code, country = (row.get(column) for column in _LEAD_ADDRESS_COLUMNS)
            account = CrmAccount(
                name=str(row["companyname"]),
                street=street,
                city=city,
                state=state,
                postal_code=postal_code,
                country=country,
            )
        contacts: list[CrmContact] = []
        primary = row.get("parentcontactid")
        if isinstance(primary, dict):
            contacts.append(_contact(primary))
        elif ref.kind == "lead" and row.get("lastname"):
            contacts.append(
                CrmContact(
                    first_name=row.get("firstname"),
                    last_name=str(row["lastname"]),
                    email=row.get("emailaddress1"),
                    phone=row.get("telephone1"),
                )
            )
        for contact in stakeholders:
            if all(contact.id != existing.id for existing in contacts):
                contacts.append(contact)
        solutions = [
            CrmSolution(
                id=str(item["pcs_partnercentersolutionid"]),
                solution_id=str(item.get("pcs_solutionid") or item.get("pcs_name") or "?"),
                name=item.get("pcs_name"),
                publisher=item.get("pcs_publisher"),
                solution_type=item.get("pcs_solutiontype"),
            )
            for item in row.get(spec.solutions_navigation) or []
        ]
        state = row.get("statecode")
        if ref.kind == "opportunity":
            stage = StageFacts(stage_name=row.get("stepname"), is_closed=state in (1, 2), is_won=state == 1)
        else:
            status = row.get("statuscode")
            stage = StageFacts(
                lead_status=LEAD_STATUS_LABELS.get(int(status)) if isinstance(status, int) else None,
                is_qualified=state == 1,
                is_disqualified=state == 2,
                is_closed=state in (1, 2),
                converted_opportunity_id=row.get("_qualifyingopportunityid_value"),
            )
        value = row.get(self._deal_value_field(ref.kind))
        modified_by = str(row.get("_modifiedby_value") or "").lower() or None
        return CrmRecord(
            ref=ref,
            name=strip_sync_mark(str(row.get(spec.name_column) or "")),
            account=account,
            contacts=contacts,
            solutions=solutions,
            stage=stage,
            connector=self._connector_fields(row),
            deal_value=Decimal(str(value)) if value is not None else None,
            currency=self._currency_of(row),
            close_date=_parse_date(row.get("estimatedclosedate")),
            notes=row.get("description"),
            owner_id=row.get("_ownerid_value"),
            owner_name=row.get(f"_ownerid_value{FORMATTED}"),
            owner_email=self._owner_email(row.get("_ownerid_value")),
            modified_at=_parse_time(row.get("modifiedon")),
            modified_by_id=modified_by,
            modified_by_integration=modified_by is not None and modified_by == self.own_user_id(),
        )

    def _owner_email(self, owner_id: Any) -> str | None:
        """The owning user's email (the partner team member Partner Center shows), cached per owner.
        A record owned by a team (not a systemuser) has no single seller: None."""
        if not owner_id:
            return None
        key = str(owner_id).lower()
        if key not in self._owner_emails:
            try:
                user = self.http.get_json(
                    "read_owner", f"systemusers({key})", params={"$select": "internalemailaddress"}
                )
            except CrmNotFoundError:
                user = {}  # the owner is a team
            self._owner_emails[key] = user.get("internalemailaddress") or None
        return self._owner_emails[key]

    def _currency_of(self, row: JsonDict) -> str | None:
        field = self.settings.deal_currency_field
        if field != "transactioncurrencyid":
            return row.get(field)
        currency = row.get("transactioncurrencyid")
        return str(currency["isocurrencycode"]) if isinstance(currency, dict) else None

    @staticmethod
    def _connector_fields(row: JsonDict) -> ConnectorFields:
        def column(name: str) -> Any:
            return row.get(CONNECTOR_COLUMNS[name])

        return ConnectorFields(
            sync_enabled=bool(column("sync_enabled")),
            referral_id=column("referral_id"),
            referral_link=column("referral_link"),
            engagement_id=column("engagement_id"),
            help_needed=_choice_label("pcs_helpneeded", column("help_needed")),
            visible_to_microsoft=bool(column("visible_to_microsoft")),
            referral_response=_choice_label("pcs_referralresponse", column("referral_response")),
            decline_reason=column("decline_reason"),
            referral_status=column("referral_status"),
            microsoft_crm_id=column("microsoft_crm_id"),
            solution_area=_choice_label("pcs_solutionarea", column("solution_area")),
            solution_play=_choice_label("pcs_solutionplay", column("solution_play")),
            partner_role=_choice_label("pcs_partnerrole", column("partner_role")),
            marketplace_intent=_choice_label("pcs_marketplaceintent", column("marketplace_intent")),
            sync_status=_choice_label("pcs_syncstatus", column("sync_status")),
            last_synced=_parse_time(column("last_synced")),
            audit=column("audit") or "",
        )

    # ---- writes ------------------------------------------------------------------------------------------
    def _currency_id(self, iso_code: str) -> str:
        code = iso_code.upper()
        if code not in self._currency_ids:
            rows = self.http.get_json(
                "currency",
                "transactioncurrencies",
                params={"$select": "transactioncurrencyid", "$filter": f"isocurrencycode eq {odata_string(code)}"},
            ).get("value", [])
            if not rows:
                raise CrmValidationError(
                    f"currency {code!r} is not enabled in this Dataverse org (no transactioncurrency with that ISO code)",
                    fields=["transactioncurrencyid"],
                )
            self._currency_ids[code] = str(rows[0]["transactioncurrencyid"])
        return self._currency_ids[code]

    def _body(self, kind: CrmObjectKind, values: RecordUpdate, current_name: str | None = None) -> JsonDict:
        """The PATCH body for the explicitly set fields (lifecycle is applied separately)."""
        body: JsonDict = {}
        for name, value in values.written().items():
            if name == "name":
                body[KINDS[kind].name_column] = with_sync_mark(str(value or ""), _mark_of(current_name))
            elif name in CONNECTOR_COLUMNS:
                column = CONNECTOR_COLUMNS[name]
                choice = column in _CHOICES or column in _TAXONOMY_CHOICES
                body[column] = _choice_value(column, value) if choice else value
            elif name in LEAD_COLUMNS:
                if kind == "lead":  # an opportunity carries them on related records
                    body[LEAD_COLUMNS[name]] = value
            else:
                body.update(self._deal_columns(kind, name, value))
        return body

    def _deal_columns(self, kind: CrmObjectKind, name: str, value: Any) -> JsonDict:
        """Columns of the deal's own values (lookups bound by @odata.bind)."""
        if name == "account_id":
            bind = f"/accounts({value})" if value else None
            return {"parentaccountid@odata.bind": bind} | (
                {"customerid_account@odata.bind": bind} if kind == "opportunity" else {}
            )
        if name == "deal_value":
            return {self._deal_value_field(kind): float(value) if value is not None else None}
        if name == "currency":
            return self._currency_columns(value)
        if name == "close_date":
            return {"estimatedclosedate": value.isoformat() if isinstance(value, dt.date) else None}
        if name == "notes":
            return {"description": value}
        if name == "owner_id":
            return {"ownerid@odata.bind": f"/systemusers({value})" if value else None}
        return {}

    def _currency_columns(self, value: Any) -> JsonDict:
        field = self.settings.deal_currency_field
        if field != "transactioncurrencyid":
            return {field: value}
        currency = f"/transactioncurrencies({self._currency_id(str(value))})" if value else None
        return {"transactioncurrencyid@odata.bind": currency}

    def upsert_by_referral_id(self, kind: CrmObjectKind, referral_id: str, values: RecordUpdate) -> UpsertResult:
        if not referral_id:
            raise CrmValidationError("a referral id is required to upsert", fields=["pcs_referralid"])
        spec = KINDS[kind]
        key_url = f"{spec.entity_set}(pcs_referralid={odata_string(referral_id)})"
        current_name = None
        if "name" in values.model_fields_set:
            # Keep an existing record's sync mark when renaming it (set_sync_result owns the mark).
            try:
                current_name = self.http.get_json("upsert", key_url, params={"$select": spec.name_column}).get(
                    spec.name_column
                )
            except CrmNotFoundError:
                current_name = None
        body = self._body(kind, values, current_name)
        body.pop("pcs_referralid", None)  # the key is in the URL; Dataverse wants it only there
        response = self.http.request(
            "upsert",
            "PATCH",
            key_url,
            params={"$select": f"{spec.id_column},statecode"},
            json_body=body,
            headers={"Prefer": "return=representation"},
            expected=(200, 201),
        )
        row = response.json()
        ref = CrmRef(kind=kind, id=str(row[spec.id_column]).lower())
        if values.lifecycle is not None:
            self._apply_lifecycle(ref, values.lifecycle, row.get("statecode"))
        return UpsertResult(ref=ref, created=response.status_code == 201)

    def update_fields(self, ref: CrmRef, values: RecordUpdate) -> None:
        if not values.model_fields_set:
            return
        spec = KINDS[ref.kind]
        current: JsonDict = {}
        if "name" in values.model_fields_set or values.lifecycle is not None:
            current = self.http.get_json(
                "update", spec.url(ref.id), params={"$select": f"{spec.name_column},statecode"}
            )
        body = self._body(ref.kind, values, current.get(spec.name_column))
        if body:
            self.http.request("update", "PATCH", spec.url(ref.id), json_body=body, headers={"If-Match": "*"})
        if values.lifecycle is not None:
            self._apply_lifecycle(ref, values.lifecycle, current.get("statecode"))

    def _apply_lifecycle(self, ref: CrmRef, lifecycle: str, state: Any) -> None:
        if lifecycle in ("won", "lost"):
            self.close(ref, won=lifecycle == "won", current_state=state)
        elif state not in (0, None):
            # Reopen (pending / active): statecode 0 via PATCH, reported to work (crm-apis.md B2, unverified).
            self.http.request(
                "reopen",
                "PATCH",
                KINDS[ref.kind].url(ref.id),
                json_body={"statecode": 0, "statuscode": 1},
                headers={"If-Match": "*"},
            )

    def close(self, ref: CrmRef, *, won: bool, current_state: Any = None) -> None:
        spec = KINDS[ref.kind]
        if ref.kind == "lead" and won:
            raise CrmValidationError(
                "a lead is qualified (converted) by a seller in Dynamics 365, not by the connector",
                fields=["statecode"],
            )
        if current_state is None:
            current_state = self.http.get_json("close", spec.url(ref.id), params={"$select": "statecode"}).get(
                "statecode"
            )
        wanted = 1 if won else 2
        if current_state == wanted:
            return  # already closed this way: nothing to do
        if ref.kind == "lead":
            self.http.request(
                "close",
                "PATCH",
                spec.url(ref.id),
                json_body={"statecode": 2, "statuscode": LEAD_DISQUALIFIED_STATUS},
                headers={"If-Match": "*"},
            )
            return
        if current_state != 0:
            self._apply_lifecycle(ref, "active", current_state)  # reopen before closing the other way
        action = "WinOpportunity" if won else "LoseOpportunity"
        self.http.request(
            "close",
            "POST",
            action,
            json_body={
                "Status": OPPORTUNITY_WON_STATUS if won else OPPORTUNITY_LOST_STATUS,
                "OpportunityClose": {
                    "subject": "Won in Partner Center" if won else "Lost in Partner Center",
                    "opportunityid@odata.bind": f"/opportunities({ref.id})",
                },
            },
        )

    # ---- accounts and contacts -------------------------------------------------------------------------
    def find_or_create_account(self, account: CrmAccount) -> str:
        conditions = [f"name eq {odata_string(account.name)}"]
        postal = account.postal_code
        conditions.append(f"address1_postalcode eq {odata_string(postal)}" if postal else "address1_postalcode eq null")
        rows = self.http.get_json(
            "find_account",
            "accounts",
            params={"$select": "accountid", "$filter": " and ".join(conditions), "$top": "1"},
        ).get("value", [])
        if rows:
            return str(rows[0]["accountid"]).lower()
        body = {
            "name": account.name,
            "address1_line1": account.street,
            "address1_city": account.city,
            "address1_stateorprovince": account.state,
            "address1_postalcode": account.postal_code,
            self.settings.account_country_field: account.country,
        }
        return self._create("create_account", "accounts", {k: v for k, v in body.items() if v is not None})

    def find_or_create_contact(self, contact: CrmContact, account_id: str | None) -> str:
        if contact.email:
            rows = self.http.get_json(
                "find_contact",
                "contacts",
                params={
                    "$select": "contactid",
                    "$filter": f"emailaddress1 eq {odata_string(contact.email)}",
                    "$top": "1",
                },
            ).get("value", [])
            if rows:
                return str(rows[0]["contactid"]).lower()
        body: JsonDict = {
            "firstname": contact.first_name,
            "lastname": contact.last_name,
            "emailaddress1": contact.email,
            "telephone1": contact.phone,
            "jobtitle": contact.title,
        }
        body = {key: value for key, value in body.items() if value is not None}
        if account_id:
            body["parentcustomerid_account@odata.bind"] = f"/accounts({account_id})"
        return self._create("create_contact", "contacts", body)

    def _create(self, operation: str, entity_set: str, body: JsonDict) -> str:
        response = self.http.request(operation, "POST", entity_set, json_body=body, expected=(204,))
        record_id = entity_id_of(response.headers.get("OData-EntityId"))
        if record_id is None:
            raise CrmError(f"Dataverse {operation}: no OData-EntityId in the create answer")
        return record_id

    def _stakeholder_role(self) -> str:
        if self._stakeholder_role_id is None:
            rows = self.http.get_json(
                "read",
                "connectionroles",
                params={"$select": "connectionroleid", "$filter": f"name eq {odata_string(STAKEHOLDER_ROLE)}"},
            ).get("value", [])
            if not rows:
                raise CrmValidationError(
                    f"the connection role {STAKEHOLDER_ROLE!r} does not exist in this org", fields=["connectionrole"]
                )
            self._stakeholder_role_id = str(rows[0]["connectionroleid"]).lower()
        return self._stakeholder_role_id

    def set_contacts(self, ref: CrmRef, contact_ids: Sequence[str]) -> None:
        spec = KINDS[ref.kind]
        wanted = [contact_id.lower() for contact_id in dict.fromkeys(contact_ids)]
        current = self.http.get_json("set_contacts", spec.url(ref.id), params={"$select": "_parentcontactid_value"})
        primary = wanted[0] if wanted else None
        if str(current.get("_parentcontactid_value") or "").lower() != (primary or ""):
            self.http.request(
                "set_contacts",
                "PATCH",
                spec.url(ref.id),
                json_body={"parentcontactid@odata.bind": f"/contacts({primary})" if primary else None},
                headers={"If-Match": "*"},
            )
        if ref.kind != "opportunity":
            return  # a lead carries one contact
        role = self._stakeholder_role()
        rows, _ = self.http.get_all(
            "set_contacts",
            "connections",
            params={
                "$select": "connectionid,_record2id_value",
                "$filter": f"_record1id_value eq {ref.id} and _record2roleid_value eq {role}",
            },
            page_size=self.page_size,
        )
        existing = {str(row["_record2id_value"]).lower(): str(row["connectionid"]) for row in rows}
        others = wanted[1:]
        parts = [
            BatchPart(
                "POST",
                "connections",
                {
                    "record1id_opportunity@odata.bind": f"/opportunities({ref.id})",
                    "record2id_contact@odata.bind": f"/contacts({contact_id})",
                    "record2roleid@odata.bind": f"/connectionroles({role})",
                },
            )
            for contact_id in others
            if contact_id not in existing
        ]
        parts += [
            BatchPart("DELETE", f"connections({connection_id})")
            for contact_id, connection_id in existing.items()
            if contact_id not in others
        ]
        self.http.batch("set_contacts", parts, atomic=True)

    def set_solutions(self, ref: CrmRef, solutions: Sequence[CrmSolution]) -> None:
        spec = KINDS[ref.kind]
        rows, _ = self.http.get_all(
            "set_solutions",
            "pcs_partnercentersolutions",
            params={
                "$select": ",".join(_SOLUTION_COLUMNS),
                "$filter": f"_{spec.solution_lookup}_value eq {ref.id}",
            },
            page_size=self.page_size,
        )
        existing = {str(row.get("pcs_solutionid")): row for row in rows}
        wanted = {solution.solution_id: solution for solution in solutions}
        parts: list[BatchPart] = []
        for solution_id, solution in wanted.items():
            values = {
                "pcs_name": solution.name or solution.solution_id,
                "pcs_solutionid": solution.solution_id,
                "pcs_publisher": solution.publisher,
                "pcs_solutiontype": solution.solution_type,
            }
            row = existing.get(solution_id)
            if row is None:
                body = {**values, f"{spec.solution_lookup}@odata.bind": f"/{spec.entity_set}({ref.id})"}
                parts.append(BatchPart("POST", "pcs_partnercentersolutions", body))
                continue
            changed = {name: value for name, value in values.items() if row.get(name) != value}
            if changed:
                url = f"pcs_partnercentersolutions({row['pcs_partnercentersolutionid']})"
                parts.append(BatchPart("PATCH", url, changed, {"If-Match": "*"}))
        for solution_id, row in existing.items():
            if solution_id not in wanted:
                parts.append(BatchPart("DELETE", f"pcs_partnercentersolutions({row['pcs_partnercentersolutionid']})"))
        self.http.batch("set_solutions", parts, atomic=True)

    # ---- audit and sync result -------------------------------------------------------------------------
    def append_audit(self, ref: CrmRef, line: str, *, at: dt.datetime | None = None) -> None:
        self._read_modify_write(ref, "append_audit", lambda row: {"pcs_audit": _prepend(row, line, at)})

    def set_sync_result(
        self, ref: CrmRef, status: SyncStatus, at: dt.datetime, *, audit_line: str | None = None
    ) -> None:
        name_column = KINDS[ref.kind].name_column

        def changes(row: JsonDict) -> JsonDict:
            body: JsonDict = {
                "pcs_syncstatus": SYNC_STATUS_OPTIONS[status],
                "pcs_lastsynced": _wire_time(at),
            }
            if self.settings.show_sync_mark_in_name:
                mark = {"Synced": SYNC_MARK_OK, "Error": SYNC_MARK_FAILED}.get(status)
                name = with_sync_mark(str(row.get(name_column) or ""), mark)
                if name != row.get(name_column):
                    body[name_column] = name
            if audit_line:
                body["pcs_audit"] = _prepend(row, audit_line, at)
            return body

        self._read_modify_write(ref, "set_sync_result", changes)

    def _read_modify_write(self, ref: CrmRef, operation: str, change: Any, attempts: int = 3) -> None:
        """GET the row, compute the change, PATCH with the row's etag; re-read on a stale etag (412)."""
        spec = KINDS[ref.kind]
        for attempt in range(attempts):
            row = self.http.get_json(operation, spec.url(ref.id), params={"$select": f"{spec.name_column},pcs_audit"})
            body = change(row)
            try:
                self.http.request(
                    operation, "PATCH", spec.url(ref.id), json_body=body, headers={"If-Match": row["@odata.etag"]}
                )
                return
            except DataverseConflictError:
                if attempt == attempts - 1:
                    raise


def _prepend(row: JsonDict, line: str, at: dt.datetime | None) -> str:
    stamp = _wire_time(at or dt.datetime.now(dt.UTC))
    entry = f"{stamp} {line}"[:AUDIT_MAX_LENGTH]
    lines = [entry, *[old for old in str(row.get("pcs_audit") or "").split("\n") if old]]
    while len("\n".join(lines)) > AUDIT_MAX_LENGTH:
        lines.pop()  # the oldest line goes, never the new one
    return "\n".join(lines)


def _mark_of(name: str | None) -> str | None:
    if not name:
        return None
    for mark in (SYNC_MARK_OK, SYNC_MARK_FAILED):
        if name.endswith(mark):
            return mark
    return None


def _contact(row: JsonDict) -> CrmContact:
    return CrmContact(
        id=str(row["contactid"]).lower(),
        first_name=row.get("firstname"),
        last_name=str(row.get("lastname") or "(no last name)"),
        email=row.get("emailaddress1"),
        phone=row.get("telephone1"),
        title=row.get("jobtitle"),
    )


def record_url(settings: Settings, kind: str, record_id: str) -> str:
    """Where an admin opens a record in the Dynamics 365 web app (the `main.aspx` record form)."""
    entity = "opportunity" if kind == "opportunity" else "lead"
    return f"{settings.dataverse_url}/main.aspx?pagetype=entityrecord&etn={entity}&id={quote(record_id, safe='')}"
