"""Salesforce adapter: implements `CrmPort` with simple-salesforce over our own `requests.Session`.

Why it is built this way (reference/crm-apis.md A1):
- simple-salesforce has no timeouts and no retries, and builds `https://{domain}.salesforce.com`
  login URLs itself. So we sign in ourselves against SALESFORCE_LOGIN_URL (OAuth client
  credentials / JWT bearer token call, or simple-salesforce's own SOAP login pointed at that URL)
  and hand simple-salesforce the `instance_url` + session id and our session. The same code
  therefore works for My Domain URLs, test.salesforce.com and the sandbox simulator.
- Errors are classified by Salesforce's `errorCode`, not the exception class (a 403 is both "no
  permission" and REQUEST_LIMIT_EXCEEDED). REQUEST_LIMIT_EXCEEDED, UNABLE_TO_LOCK_ROW, 5xx and
  network errors are retried with back-off (non-idempotent creates only on codes that prove the
  write did not happen); INVALID_SESSION_ID signs in again once and repeats the call.
- Every value interpolated into SOQL goes through `format_soql` (quotes and backslashes escaped),
  and setting-provided field names are checked to be plain API names.
- Every HTTP call is counted per port operation (`api_call_counts()`), for benchmarks.

simple-salesforce is imported inside methods: this module is imported by the composition root, and
the library (with zeep) must not slow the Functions cold start.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from shared.crm.port import (
    SYNC_MARK_FAILED,
    SYNC_MARK_OK,
    ChangedRecord,
    ChangedRecords,
    ConnectorFields,
    CrmAccount,
    CrmAuthError,
    CrmCapabilities,
    CrmContact,
    CrmError,
    CrmNotFoundError,
    CrmObjectKind,
    CrmRecord,
    CrmRef,
    CrmSetupError,
    CrmSolution,
    CrmTransientError,
    CrmValidationError,
    RecordUpdate,
    StageFacts,
    SyncStatus,
    UpsertResult,
    strip_sync_mark,
    with_sync_mark,
)
from shared.retry import DEFAULT_BACKOFF, RetryBudget, RetryLater
from shared.settings import Settings

if TYPE_CHECKING:
    from simple_salesforce.api import Salesforce

T = TypeVar("T")

OBJECT_NAMES: dict[CrmObjectKind, str] = {"opportunity": "Opportunity", "lead": "Lead"}
SOLUTION_OBJECT = "PCS_Solution__c"
SOLUTION_PARENT_FIELDS: dict[CrmObjectKind, str] = {"opportunity": "PCS_Opportunity__c", "lead": "PCS_Lead__c"}
REFERRAL_ID_FIELD = "PCS_Referral_Id__c"
SYNC_FIELD = "PCS_Sync_With_Partner_Center__c"
AUDIT_FIELD = "PCS_Audit__c"
DEFAULT_AUDIT_LENGTH = 32768
# Lead statuses of a standard org (LeadStatus); converting a lead is a seller's action in Salesforce.
LEAD_STATUS = {"pending": "Open - Not Contacted", "active": "Working - Contacted", "lost": "Closed - Not Converted"}
DISQUALIFIED_LEAD_STATUSES = {"Closed - Not Converted"}

CONNECTOR_FIELDS = {
    "sync_enabled": SYNC_FIELD,
    "referral_id": REFERRAL_ID_FIELD,
    "referral_link": "PCS_Referral_Link__c",
    "engagement_id": "PCS_Engagement_Id__c",
    "help_needed": "PCS_Help_Needed__c",
    "visible_to_microsoft": "PCS_Visible_To_Microsoft__c",
    "referral_response": "PCS_Referral_Response__c",
    "decline_reason": "PCS_Decline_Reason__c",
    "referral_status": "PCS_Referral_Status__c",
    "microsoft_crm_id": "PCS_Microsoft_CRM_Id__c",
    "solution_area": "PCS_Solution_Area__c",
    "solution_play": "PCS_Solution_Play__c",
    "partner_role": "PCS_Partner_Role__c",
    "marketplace_intent": "PCS_Marketplace_Intent__c",
    "sync_status": "PCS_Sync_Status__c",
    "last_synced": "PCS_Last_Synced__c",
    "audit": AUDIT_FIELD,
}
DEAL_VALUE = "<CRM_DEAL_VALUE_FIELD>"
"""Placeholder for the configured deal value field."""
_COMMON_COLUMNS = {"notes": "Description", "owner_id": "OwnerId"}
COLUMNS: dict[CrmObjectKind, dict[str, str]] = {
    "opportunity": _COMMON_COLUMNS
    | {"name": "Name", "account_id": "AccountId", "deal_value": DEAL_VALUE, "close_date": "CloseDate"},
    # A lead has no deal value, close date or account: it carries its company and contact itself.
    "lead": _COMMON_COLUMNS
    | {
        "name": "Company",
        "lead_company": "Company",
        "lead_first_name": "FirstName",
        "lead_last_name": "LastName",
        "lead_email": "Email",
        "lead_phone": "Phone",
        "lead_street": "Street",
        "lead_city": "City",
        "lead_state": "State",
        "lead_postal_code": "PostalCode",
        "lead_country": "Country",
    },
}
"""Neutral `RecordUpdate` names -> Salesforce fields (connector fields: CONNECTOR_FIELDS)."""
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
# Codes that prove Salesforce did not perform the write, so even a create may be repeated.
_NOT_PERFORMED = {"REQUEST_LIMIT_EXCEEDED", "UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE"}
_RETRYABLE = _NOT_PERFORMED | {"UNKNOWN_EXCEPTION"}
# The org lacks the connector's schema, or the integration user a permission (field-level security).
_SETUP_CODES = {
    "INSUFFICIENT_ACCESS_OR_READONLY",
    "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY",
    "INVALID_FIELD",
    "INVALID_TYPE",
    "INVALID_FIELD_FOR_INSERT_UPDATE",
}


def _crm_error(operation: str, error: Any, *, transient: bool) -> CrmError:
    """The port's error for a Salesforce API error that is not retried (any more)."""
    code, message, fields = _error_details(error)
    if transient:
        return CrmTransientError(f"Salesforce {operation}: {code or error.status}: {message}")
    if error.status == 404:
        return CrmNotFoundError(f"Salesforce {operation}: {code}: {message}")
    if code in _SETUP_CODES:
        return CrmSetupError(f"Salesforce {operation}: {code}: {message}")
    return CrmValidationError(f"Salesforce {operation}: {code}: {message}", code=code, fields=fields)


def _salesforce_value(name: str, value: Any) -> Any:
    if name == "name":
        return strip_sync_mark(value) if value else value
    if name == "deal_value":
        return float(value) if value is not None else None
    if name == "close_date":
        return value.isoformat() if value else None
    return value


class _SalesforceHttpAdapter(HTTPAdapter):
    """A default timeout on every call, and our CA bundle even when REQUESTS_CA_BUNDLE is set
    (requests lets the environment override `Session.verify`)."""

    def __init__(self, timeout_seconds: float, ca_bundle: str | None) -> None:
        super().__init__()
        self.timeout_seconds = timeout_seconds
        self.ca_bundle = ca_bundle

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout_seconds
        if self.ca_bundle:
            kwargs["verify"] = self.ca_bundle
        return super().send(request, *args, **kwargs)


def _error_details(error: Exception) -> tuple[str | None, str, list[str]]:
    """(errorCode, message, fields) of a simple-salesforce error, whatever shape its content has."""
    content = getattr(error, "content", None)
    if isinstance(content, list) and content and isinstance(content[0], dict):
        first = content[0]
        return (
            first.get("errorCode") or first.get("statusCode"),
            str(first.get("message", "")),
            list(first.get("fields") or []),
        )
    return None, str(content if content is not None else error), []


def _sobject(client: Salesforce, object_name: str) -> Any:
    """`client.<Object>` (an SFType); simple-salesforce resolves it dynamically."""
    return getattr(client, object_name)


def _restful(client: Salesforce, *, path: str, method: str, **kwargs: Any) -> Any:
    return client.restful(path, method=method, **kwargs)


def _api_name(value: str, setting: str) -> str:
    if not _API_NAME.match(value):
        raise CrmValidationError(
            f"{setting} must be a Salesforce field API name like 'Amount', not {value!r}", fields=[setting]
        )
    return value


class SalesforceAdapter:
    """`CrmPort` for Salesforce. Thread-compatible (one instance per worker); signs in on first use."""

    kind = "salesforce"

    def __init__(
        self,
        settings: Settings,
        *,
        timeout_seconds: float = 30.0,
        retry_delays: Sequence[float] = DEFAULT_BACKOFF,
        poll_overlap: dt.timedelta = dt.timedelta(minutes=5),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        # Unaccepted referrals wait in a stage of their own; a lead's Company is the customer (no deal name).
        self.capabilities = CrmCapabilities(pending_stage=settings.salesforce_pending_stage, lead_has_name=False)
        self.retry_delays = tuple(retry_delays)
        self.poll_overlap = poll_overlap
        self._sleep = sleep
        self.deal_value_field = _api_name(settings.deal_value_field, "CRM_DEAL_VALUE_FIELD")
        self.currency_field = _api_name(settings.deal_currency_field, "CRM_DEAL_CURRENCY_FIELD")
        self.country_field = _api_name(settings.account_country_field, "CRM_ACCOUNT_COUNTRY_FIELD")
        self.session = requests.Session()
        adapter = _SalesforceHttpAdapter(timeout_seconds, settings.tls_ca_bundle)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.hooks["response"].append(self._count_call)
        self._calls: Counter[str] = Counter()
        self._operation = "login"
        self._client: Salesforce | None = None
        self._user_id: str | None = None
        self._describes: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()

    # ---- plumbing ------------------------------------------------------------------------------------
    def _count_call(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._calls[self._operation] += 1

    def api_call_counts(self) -> Mapping[str, int]:
        return dict(self._calls)

    def _login(self) -> Salesforce:
        from simple_salesforce.api import Salesforce
        from simple_salesforce.exceptions import SalesforceAuthenticationFailed
        from simple_salesforce.login import SalesforceLogin

        settings = self.settings
        previous, self._operation = self._operation, "login"
        try:
            if settings.salesforce_auth == "password":
                username = settings.salesforce_username or ""
                session_id, instance = SalesforceLogin(
                    username=username,
                    password=settings.salesforce_password.get_secret_value() if settings.salesforce_password else "",
                    security_token=settings.salesforce_security_token.get_secret_value()
                    if settings.salesforce_security_token
                    else "",
                    sf_version=settings.salesforce_api_version,
                    session=self.session,
                    scratch_url=settings.salesforce_login_url,  # the SOAP login goes to {login url}/services/Soap/u/{v}
                )
            else:
                session_id, instance, self._user_id = self._token_login()
        except SalesforceAuthenticationFailed as error:
            raise CrmAuthError(
                f"Salesforce sign-in ({settings.salesforce_auth}) failed: {error.code}: {error.auth_message}"
            ) from error
        except requests.RequestException as error:
            raise CrmTransientError(
                f"Salesforce sign-in could not reach {settings.salesforce_login_url}: {error}"
            ) from error
        finally:
            self._operation = previous
        return Salesforce(
            session_id=session_id, instance=instance, version=settings.salesforce_api_version, session=self.session
        )

    def _token_login(self) -> tuple[str, str, str | None]:
        """OAuth token call (client credentials or JWT bearer) exactly as simple-salesforce sends it."""
        from simple_salesforce.exceptions import SalesforceAuthenticationFailed

        settings = self.settings
        client_id = settings.salesforce_client_id or ""
        headers: dict[str, str] = {}
        if settings.salesforce_auth == "client_credentials":
            secret = settings.salesforce_client_secret.get_secret_value() if settings.salesforce_client_secret else ""
            headers["Authorization"] = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
            form = {"grant_type": "client_credentials"}
        else:
            import jwt

            key = settings.salesforce_private_key.get_secret_value() if settings.salesforce_private_key else ""
            claims = {
                "iss": client_id,
                "sub": settings.salesforce_username,
                "aud": settings.salesforce_login_url,
                "exp": int(time.time()) + 180,
            }
            form = {
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": jwt.encode(claims, key, algorithm="RS256"),
            }
        response = self.session.post(
            f"{settings.salesforce_login_url}/services/oauth2/token", data=form, headers=headers
        )
        try:
            body = response.json()
        except ValueError:
            body = {"error": str(response.status_code), "error_description": response.text[:200]}
        if response.status_code >= 500:
            raise CrmTransientError(
                f"Salesforce sign-in answered {response.status_code}: {body.get('error_description')}"
            )
        if response.status_code != 200 or "access_token" not in body:
            raise SalesforceAuthenticationFailed(body.get("error"), body.get("error_description"))
        instance = re.sub(r"^https?://", "", str(body["instance_url"])).rstrip("/")
        identity = str(body.get("id") or "")
        return str(body["access_token"]), instance, identity.rsplit("/", 1)[-1] or None

    def _sf(self) -> Salesforce:
        with self._lock:
            if self._client is None:
                self._client = self._login()
            return self._client

    def _call(self, operation: str, action: Callable[[Salesforce], T], *, idempotent: bool = True) -> T:
        """Run one Salesforce call within the retry budget (shared/retry.py); translate failures to `CrmError`s."""
        from simple_salesforce.exceptions import SalesforceError, SalesforceMoreThanOneRecord

        def attempt() -> T:
            try:
                return self._signed_in(operation, action)
            except SalesforceMoreThanOneRecord as error:
                raise CrmValidationError(
                    f"{operation}: more than one record matches", code="MULTIPLE_CHOICES"
                ) from error
            except SalesforceError as error:
                code = _error_details(error)[0]
                transient = code in _RETRYABLE or error.status >= 500
                failure = _crm_error(operation, error, transient=transient)
                if transient and (idempotent or code in _NOT_PERFORMED):
                    raise RetryLater(failure) from error
                raise failure from error
            except requests.RequestException as error:
                failure = CrmTransientError(f"Salesforce {operation}: {type(error).__name__}: {error}")
                if idempotent:
                    raise RetryLater(failure) from error
                raise failure from error

        return RetryBudget(backoff=self.retry_delays).call(attempt, sleep=self._sleep)

    def _signed_in(self, operation: str, action: Callable[[Salesforce], T]) -> T:
        """`action` on the session; an expired or revoked session is renewed once (not a retry)."""
        from simple_salesforce.exceptions import SalesforceExpiredSession

        try:
            return self._on_session(operation, action)
        except SalesforceExpiredSession:
            with self._lock:
                self._client = None  # the session expired or was revoked: sign in again, once
        try:
            return self._on_session(operation, action)
        except SalesforceExpiredSession as error:
            raise CrmAuthError("Salesforce refused a fresh session (INVALID_SESSION_ID)") from error

    def _on_session(self, operation: str, action: Callable[[Salesforce], T]) -> T:
        client = self._sf()
        self._operation = operation
        return action(client)

    def _query(self, operation: str, soql: str, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        return self._call(operation, lambda sf: list(sf.query_all_iter(soql, include_deleted=include_deleted)))

    @staticmethod
    def _soql(template: str, *args: Any, **kwargs: Any) -> str:
        from simple_salesforce.format import format_soql

        return str(format_soql(template, *args, **kwargs))

    def _describe(self, object_name: str) -> dict[str, Any]:
        """Field describe of an object (cached): which optional fields exist, field lengths."""
        if object_name not in self._describes:
            result = self._call("describe", lambda sf: _sobject(sf, object_name).describe())
            self._describes[object_name] = {item["name"].lower(): item for item in result["fields"]}
        return self._describes[object_name]

    def _has_field(self, object_name: str, field_name: str) -> bool:
        return field_name.lower() in self._describe(object_name)

    def _check_results(self, operation: str, results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Collections answer 200 even when items fail: check every item."""
        checked = list(results or [])
        failures = [item for item in checked if not item.get("success")]
        if failures:
            errors = failures[0].get("errors") or [{}]
            code = errors[0].get("statusCode") or errors[0].get("errorCode")
            message = f"Salesforce {operation}: {len(failures)} of {len(checked)} records failed: {code}: {errors[0].get('message')}"
            if code in _RETRYABLE:
                raise CrmTransientError(message)
            raise CrmValidationError(message, code=code, fields=errors[0].get("fields") or [])
        return checked

    def _collection(self, operation: str, method: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create (POST) or update (PATCH) records 200 at a time through sObject collections."""
        results: list[dict[str, Any]] = []
        for start in range(0, len(records), 200):
            body = {"allOrNone": True, "records": records[start : start + 200]}
            send = functools.partial(_restful, path="composite/sobjects", method=method, json=body)
            results += self._check_results(operation, self._call(operation, send, idempotent=method != "POST"))
        return results

    def _delete_many(self, operation: str, ids: list[str]) -> None:
        for start in range(0, len(ids), 200):
            params = {"ids": ",".join(ids[start : start + 200]), "allOrNone": "true"}
            send = functools.partial(_restful, path="composite/sobjects", method="DELETE", params=params)
            self._check_results(operation, self._call(operation, send))

    # ---- field mapping -------------------------------------------------------------------------------
    def _writable(self, kind: CrmObjectKind, values: RecordUpdate) -> dict[str, Any]:
        """Salesforce field values for the explicitly set neutral values."""
        written = values.written()
        out: dict[str, Any] = {}
        for name, value in written.items():
            if name == "lifecycle":
                out.update(self._lifecycle_fields(kind, value) if value is not None else {})
            elif name == "lead_company" and "name" in written:
                continue  # `name` is the lead's Company
            elif (column := self._column(kind, name)) is not None:
                out[column] = _salesforce_value(name, value)
        return out

    def _column(self, kind: CrmObjectKind, name: str) -> str | None:
        """The Salesforce field a neutral value is written to; None where the object has none."""
        if name in CONNECTOR_FIELDS:
            return CONNECTOR_FIELDS[name]
        if name == "currency":  # only in multi-currency orgs
            return self.currency_field if self._has_field(OBJECT_NAMES[kind], self.currency_field) else None
        column = COLUMNS[kind].get(name)
        return self.deal_value_field if column == DEAL_VALUE else column

    def _lifecycle_fields(self, kind: CrmObjectKind, lifecycle: str) -> dict[str, Any]:
        settings = self.settings
        if kind == "opportunity":
            stages = {
                "pending": settings.salesforce_pending_stage,
                "active": settings.salesforce_active_stage,
                "won": settings.salesforce_won_stage,
                "lost": settings.salesforce_lost_stage,
            }
            return {"StageName": stages[lifecycle]}
        if lifecycle == "won":
            raise CrmValidationError(
                "a Salesforce lead is qualified by converting it in Salesforce, not through the API",
                fields=["lifecycle"],
            )
        return {"Status": LEAD_STATUS[lifecycle]}

    def _select_fields(self, kind: CrmObjectKind) -> list[str]:
        connector = list(CONNECTOR_FIELDS.values())
        common = [
            "Id",
            "Description",
            "OwnerId",
            "Owner.Name",
            "Owner.Email",
            "SystemModstamp",
            "LastModifiedById",
            *connector,
        ]
        if kind == "lead":
            lead = [
                "FirstName",
                "LastName",
                "Company",
                "Email",
                "Phone",
                "Title",
                "Street",
                "City",
                "State",
                "PostalCode",
            ]
            return [*common, *lead, "Country", "Status", "IsConverted", "ConvertedOpportunityId"]
        account = ["Account.Name", "Account.BillingStreet", "Account.BillingCity", "Account.BillingState"]
        account += ["Account.BillingPostalCode", f"Account.{self.country_field}"]
        fields = [
            *common,
            "Name",
            "AccountId",
            *account,
            "StageName",
            "IsClosed",
            "IsWon",
            "CloseDate",
            self.deal_value_field,
        ]
        if self._has_field("Opportunity", self.currency_field):
            fields.append(self.currency_field)
        return list(dict.fromkeys(fields))

    def _record(self, kind: CrmObjectKind, row: dict[str, Any]) -> CrmRecord:
        def text(key: str, source: dict[str, Any] | None = None) -> str | None:
            value = (source if source is not None else row).get(key)
            return None if value in (None, "") else str(value)

        owner = row.get("Owner") or {}
        solutions = [
            CrmSolution(
                id=item["Id"],
                solution_id=item.get("PCS_Solution_Id__c") or "",
                name=item.get("Name"),
                publisher=item.get("PCS_Publisher__c"),
                solution_type=item.get("PCS_Solution_Type__c"),
            )
            for item in ((row.get("PCS_Solutions__r") or {}).get("records") or [])
            if item.get("PCS_Solution_Id__c")
        ]
        last_synced = row.get("PCS_Last_Synced__c")
        connector = ConnectorFields(
            sync_enabled=bool(row.get(SYNC_FIELD)),
            referral_id=text(REFERRAL_ID_FIELD),
            referral_link=text("PCS_Referral_Link__c"),
            engagement_id=text("PCS_Engagement_Id__c"),
            help_needed=text("PCS_Help_Needed__c"),
            visible_to_microsoft=bool(row.get("PCS_Visible_To_Microsoft__c")),
            referral_response=row.get("PCS_Referral_Response__c") or None,
            decline_reason=text("PCS_Decline_Reason__c"),
            referral_status=text("PCS_Referral_Status__c"),
            microsoft_crm_id=text("PCS_Microsoft_CRM_Id__c"),
            solution_area=text(CONNECTOR_FIELDS["solution_area"]),
            solution_play=text(CONNECTOR_FIELDS["solution_play"]),
            partner_role=text(CONNECTOR_FIELDS["partner_role"]),
            marketplace_intent=text(CONNECTOR_FIELDS["marketplace_intent"]),
            sync_status=row.get("PCS_Sync_Status__c") or None,
            last_synced=dt.datetime.fromisoformat(last_synced) if last_synced else None,
            audit=row.get(AUDIT_FIELD) or "",
        )
        common: dict[str, Any] = {
            "ref": CrmRef(kind=kind, id=row["Id"]),
            "solutions": solutions,
            "connector": connector,
            "notes": text("Description"),
            "owner_id": text("OwnerId"),
            "owner_name": text("Name", owner),
            "owner_email": text("Email", owner),
            "modified_at": dt.datetime.fromisoformat(row["SystemModstamp"]) if row.get("SystemModstamp") else None,
            "modified_by_id": text("LastModifiedById"),
            "modified_by_integration": bool(self._user_id and row.get("LastModifiedById") == self._user_id),
        }
        if kind == "lead":
            status = text("Status")
            return CrmRecord(
                name=strip_sync_mark(row.get("Company") or ""),
                account=CrmAccount(
                    name=strip_sync_mark(row.get("Company") or "") or "(no company)",
                    street=text("Street"),
                    city=text("City"),
                    state=text("State"),
                    postal_code=text("PostalCode"),
                    country=text("Country"),
                ),
                contacts=[
                    CrmContact(
                        first_name=text("FirstName"),
                        last_name=row.get("LastName") or "(unknown)",
                        email=text("Email"),
                        phone=text("Phone"),
                        title=text("Title"),
                    )
                ],
                stage=StageFacts(
                    lead_status=status,
                    is_qualified=bool(row.get("IsConverted")),
                    is_disqualified=status in DISQUALIFIED_LEAD_STATUSES,
                    converted_opportunity_id=text("ConvertedOpportunityId"),
                ),
                **common,
            )
        account_row = row.get("Account")
        account = (
            CrmAccount(
                id=row.get("AccountId"),
                name=account_row.get("Name") or "",
                street=text("BillingStreet", account_row),
                city=text("BillingCity", account_row),
                state=text("BillingState", account_row),
                postal_code=text("BillingPostalCode", account_row),
                country=text(self.country_field, account_row),
            )
            if account_row
            else None
        )
        contacts = [
            CrmContact(
                id=item.get("ContactId"),
                first_name=text("FirstName", item.get("Contact") or {}),
                last_name=(item.get("Contact") or {}).get("LastName") or "(unknown)",
                email=text("Email", item.get("Contact") or {}),
                phone=text("Phone", item.get("Contact") or {}),
                title=text("Title", item.get("Contact") or {}),
            )
            for item in ((row.get("OpportunityContactRoles") or {}).get("records") or [])
        ]
        value = row.get(self.deal_value_field)
        return CrmRecord(
            name=strip_sync_mark(row.get("Name") or ""),
            account=account,
            contacts=contacts,
            stage=StageFacts(
                stage_name=text("StageName"), is_closed=bool(row.get("IsClosed")), is_won=bool(row.get("IsWon"))
            ),
            deal_value=Decimal(str(value)) if value is not None else None,
            currency=text(self.currency_field),
            close_date=dt.date.fromisoformat(row["CloseDate"]) if row.get("CloseDate") else None,
            **common,
        )

    # ---- CrmPort: reading -----------------------------------------------------------------------------
    def changed_since(self, since: dt.datetime | None, *, position: str | None = None) -> ChangedRecords:
        # `since` is a whole second: format_soql writes datetimes without fractions, and a
        # SystemModstamp (milliseconds) at or after that second is returned.
        where = self._soql(" AND SystemModstamp >= {}", since) if since else ""
        changes: set[ChangedRecord] = set()

        def note(kind: CrmObjectKind, record_id: str | None, stamp_text: str) -> None:
            if record_id:
                changes.add(
                    ChangedRecord(ref=CrmRef(kind=kind, id=record_id), stamp=dt.datetime.fromisoformat(stamp_text))
                )

        for kind, object_name in OBJECT_NAMES.items():
            soql = f"SELECT Id, SystemModstamp FROM {object_name} WHERE {SYNC_FIELD} = true{where} ORDER BY SystemModstamp, Id"
            for row in self._query("changed_since", soql):
                note(kind, row["Id"], row["SystemModstamp"])
        # Children count as changes of their parent; queryAll also sees removed children.
        solution_soql = (
            "SELECT PCS_Opportunity__c, PCS_Lead__c, SystemModstamp FROM PCS_Solution__c "
            f"WHERE (PCS_Opportunity__r.{SYNC_FIELD} = true OR PCS_Lead__r.{SYNC_FIELD} = true){where} "
            "ORDER BY SystemModstamp, Id"
        )
        for row in self._query("changed_since", solution_soql, include_deleted=True):
            note("opportunity", row.get("PCS_Opportunity__c"), row["SystemModstamp"])
            note("lead", row.get("PCS_Lead__c"), row["SystemModstamp"])
        role_soql = (
            "SELECT OpportunityId, SystemModstamp FROM OpportunityContactRole "
            f"WHERE Opportunity.{SYNC_FIELD} = true{where} ORDER BY SystemModstamp, Id"
        )
        for row in self._query("changed_since", role_soql, include_deleted=True):
            note("opportunity", row.get("OpportunityId"), row["SystemModstamp"])
        return ChangedRecords(changes=sorted(changes, key=lambda item: (item.stamp, item.ref.kind, item.ref.id)))

    def read(self, ref: CrmRef) -> CrmRecord:
        object_name = OBJECT_NAMES[ref.kind]
        solutions = (
            "(SELECT Id, Name, PCS_Solution_Id__c, PCS_Publisher__c, PCS_Solution_Type__c "
            "FROM PCS_Solutions__r ORDER BY CreatedDate, Id)"
        )
        subqueries = [solutions]
        if ref.kind == "opportunity":
            contact = ", ".join(f"Contact.{name}" for name in ("FirstName", "LastName", "Email", "Phone", "Title"))
            subqueries.insert(
                0,
                f"(SELECT ContactId, IsPrimary, {contact} FROM OpportunityContactRoles ORDER BY IsPrimary DESC, CreatedDate, Id)",
            )
        fields = ", ".join(self._select_fields(ref.kind) + subqueries)
        rows = self._query("read", self._soql(f"SELECT {fields} FROM {object_name} WHERE Id = {{}}", ref.id))
        if not rows:
            raise CrmNotFoundError(f"Salesforce {object_name} {ref.id} does not exist")
        return self._record(ref.kind, rows[0])

    # ---- CrmPort: writing ------------------------------------------------------------------------------
    def upsert_by_referral_id(self, kind: CrmObjectKind, referral_id: str, values: RecordUpdate) -> UpsertResult:
        object_name = OBJECT_NAMES[kind]
        fields = self._writable(kind, values)
        fields.pop(REFERRAL_ID_FIELD, None)
        rows = self._query(
            "upsert", self._soql(f"SELECT Id FROM {object_name} WHERE {REFERRAL_ID_FIELD} = {{}} LIMIT 2", referral_id)
        )
        if len(rows) > 1:
            raise CrmValidationError(
                f"more than one Salesforce {object_name} has referral id {referral_id}", code="MULTIPLE_CHOICES"
            )
        if rows:
            ref = CrmRef(kind=kind, id=rows[0]["Id"])
            if fields:
                self._call("upsert", lambda sf: _sobject(sf, object_name).update(ref.id, fields))
            return UpsertResult(ref=ref, created=False)
        fields = self._creation_defaults(kind, fields)
        from simple_salesforce.format import format_external_id

        response = self._call(
            "upsert",
            lambda sf: _sobject(sf, object_name).upsert(
                format_external_id(REFERRAL_ID_FIELD, referral_id), fields, raw_response=True
            ),
        )
        body = response.json() if response.content else {}
        record_id = body.get("id")
        if not record_id:  # 204: an update (before API v46): someone created it meanwhile
            return UpsertResult(ref=self._ref_by_referral_id(kind, referral_id), created=False)
        return UpsertResult(ref=CrmRef(kind=kind, id=record_id), created=response.status_code == 201)

    def _ref_by_referral_id(self, kind: CrmObjectKind, referral_id: str) -> CrmRef:
        object_name = OBJECT_NAMES[kind]
        rows = self._query(
            "upsert", self._soql(f"SELECT Id FROM {object_name} WHERE {REFERRAL_ID_FIELD} = {{}}", referral_id)
        )
        if not rows:
            raise CrmNotFoundError(f"no Salesforce {object_name} with referral id {referral_id}")
        return CrmRef(kind=kind, id=rows[0]["Id"])

    def _creation_defaults(self, kind: CrmObjectKind, fields: dict[str, Any]) -> dict[str, Any]:
        """What Salesforce needs to create the record; a new referral lands in the pending stage."""
        if kind == "opportunity":
            fields.setdefault("StageName", self.settings.salesforce_pending_stage)
            missing = [name for name, key in (("name", "Name"), ("close_date", "CloseDate")) if not fields.get(key)]
        else:
            fields.setdefault("Status", LEAD_STATUS["pending"])
            missing = [
                name for name, key in (("name", "Company"), ("lead_last_name", "LastName")) if not fields.get(key)
            ]
        if missing:
            raise CrmValidationError(
                f"cannot create a Salesforce {OBJECT_NAMES[kind]} without {', '.join(missing)}",
                code="REQUIRED_FIELD_MISSING",
                fields=missing,
            )
        return fields

    def find_or_create_account(self, account: CrmAccount) -> str:
        soql = self._soql(
            "SELECT Id FROM Account WHERE Name = {} AND BillingPostalCode = {} ORDER BY CreatedDate, Id LIMIT 1",
            account.name,
            account.postal_code,
        )
        rows = self._query("find_or_create_account", soql)
        if rows:
            return str(rows[0]["Id"])
        values = {
            "Name": account.name,
            "BillingStreet": account.street,
            "BillingCity": account.city,
            "BillingState": account.state,
            "BillingPostalCode": account.postal_code,
            self.country_field: account.country,
        }
        return self._create_record("find_or_create_account", "Account", values)

    def find_or_create_contact(self, contact: CrmContact, account_id: str | None) -> str:
        if contact.email:
            soql = self._soql("SELECT Id FROM Contact WHERE Email = {} ORDER BY CreatedDate, Id LIMIT 1", contact.email)
            rows = self._query("find_or_create_contact", soql)
            if rows:
                return str(rows[0]["Id"])
        values = {
            "FirstName": contact.first_name,
            "LastName": contact.last_name,
            "Email": contact.email,
            "Phone": contact.phone,
            "Title": contact.title,
            "AccountId": account_id,
        }
        return self._create_record("find_or_create_contact", "Contact", values)

    def _create_record(self, operation: str, object_name: str, values: dict[str, Any]) -> str:
        """Create one record from the non-empty values (a create is never repeated blindly: see `_call`)."""
        present = {key: value for key, value in values.items() if value is not None}
        created = self._call(operation, lambda sf: _sobject(sf, object_name).create(present), idempotent=False)
        return str(created["id"])

    def set_contacts(self, ref: CrmRef, contact_ids: Sequence[str]) -> None:
        if ref.kind == "lead":
            return  # a lead carries its contact's details itself (RecordUpdate.lead_*)
        wanted = list(dict.fromkeys(contact_ids))
        rows = self._query(
            "set_contacts",
            self._soql("SELECT Id, ContactId, IsPrimary FROM OpportunityContactRole WHERE OpportunityId = {}", ref.id),
        )
        existing = {row["ContactId"][:15]: row for row in rows}
        wanted_short = [contact_id[:15] for contact_id in wanted]
        self._delete_many("set_contacts", [row["Id"] for key, row in existing.items() if key not in wanted_short])
        creates = [
            {
                "attributes": {"type": "OpportunityContactRole"},
                "OpportunityId": ref.id,
                "ContactId": contact_id,
                "IsPrimary": index == 0,
            }
            for index, contact_id in enumerate(wanted)
            if contact_id[:15] not in existing
        ]
        updates = [
            {"attributes": {"type": "OpportunityContactRole"}, "id": existing[key]["Id"], "IsPrimary": index == 0}
            for index, key in enumerate(wanted_short)
            if key in existing and bool(existing[key]["IsPrimary"]) != (index == 0)
        ]
        if creates:
            self._collection("set_contacts", "POST", creates)
        if updates:
            self._collection("set_contacts", "PATCH", updates)

    def set_solutions(self, ref: CrmRef, solutions: Sequence[CrmSolution]) -> None:
        parent_field = SOLUTION_PARENT_FIELDS[ref.kind]
        rows = self._query(
            "set_solutions",
            self._soql(
                f"SELECT Id, Name, PCS_Solution_Id__c, PCS_Publisher__c, PCS_Solution_Type__c FROM {SOLUTION_OBJECT} "
                f"WHERE {parent_field} = {{}}",
                ref.id,
            ),
        )
        existing = {str(row.get("PCS_Solution_Id__c") or ""): row for row in rows}
        wanted = {solution.solution_id: solution for solution in solutions}
        stale = [row["Id"] for key, row in existing.items() if key not in wanted]
        # Duplicate rows of one solution id: keep the first, remove the rest.
        stale += [row["Id"] for row in rows if existing.get(str(row.get("PCS_Solution_Id__c") or "")) is not row]
        self._delete_many("set_solutions", stale)

        def values(solution: CrmSolution) -> dict[str, Any]:
            return {
                "Name": (solution.name or solution.solution_id)[:80],
                "PCS_Solution_Id__c": solution.solution_id,
                "PCS_Publisher__c": solution.publisher,
                "PCS_Solution_Type__c": solution.solution_type,
            }

        creates = [
            {"attributes": {"type": SOLUTION_OBJECT}, parent_field: ref.id, **values(solution)}
            for key, solution in wanted.items()
            if key not in existing
        ]
        updates = [
            {"attributes": {"type": SOLUTION_OBJECT}, "id": existing[key]["Id"], **values(solution)}
            for key, solution in wanted.items()
            if key in existing and any(existing[key].get(name) != value for name, value in values(solution).items())
        ]
        if creates:
            self._collection("set_solutions", "POST", creates)
        if updates:
            self._collection("set_solutions", "PATCH", updates)

    def update_fields(self, ref: CrmRef, values: RecordUpdate) -> None:
        fields = self._writable(ref.kind, values)
        if fields:
            object_name = OBJECT_NAMES[ref.kind]
            self._call("update_fields", lambda sf: _sobject(sf, object_name).update(ref.id, fields))

    def _name_and_audit(self, ref: CrmRef, operation: str) -> dict[str, Any]:
        name_field = "Name" if ref.kind == "opportunity" else "Company"
        object_name = OBJECT_NAMES[ref.kind]
        rows = self._query(
            operation, self._soql(f"SELECT Id, {name_field}, {AUDIT_FIELD} FROM {object_name} WHERE Id = {{}}", ref.id)
        )
        if not rows:
            raise CrmNotFoundError(f"Salesforce {object_name} {ref.id} does not exist")
        return {
            "name_field": name_field,
            "name": rows[0].get(name_field) or "",
            "audit": rows[0].get(AUDIT_FIELD) or "",
        }

    def _audit_text(self, ref: CrmRef, current: str, line: str, at: dt.datetime | None) -> str:
        stamp = (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        entry = f"{stamp} {line.strip()}"
        limit = int(
            self._describe(OBJECT_NAMES[ref.kind]).get(AUDIT_FIELD.lower(), {}).get("length") or DEFAULT_AUDIT_LENGTH
        )
        if len(entry) >= limit:
            return entry[:limit]
        lines = [entry]
        size = len(entry)
        for old in current.splitlines():
            if size + 1 + len(old) > limit:
                break  # drop the oldest lines, never the new one
            lines.append(old)
            size += 1 + len(old)
        return "\n".join(lines)

    def append_audit(self, ref: CrmRef, line: str, *, at: dt.datetime | None = None) -> None:
        current = self._name_and_audit(ref, "append_audit")
        audit = self._audit_text(ref, current["audit"], line, at)
        self._call("append_audit", lambda sf: _sobject(sf, OBJECT_NAMES[ref.kind]).update(ref.id, {AUDIT_FIELD: audit}))

    def set_sync_result(
        self, ref: CrmRef, status: SyncStatus, at: dt.datetime, *, audit_line: str | None = None
    ) -> None:
        current = self._name_and_audit(ref, "set_sync_result")
        fields: dict[str, Any] = {
            CONNECTOR_FIELDS["sync_status"]: status,
            CONNECTOR_FIELDS["last_synced"]: at.astimezone(dt.UTC).isoformat(),
        }
        mark = (
            {"Synced": SYNC_MARK_OK, "Error": SYNC_MARK_FAILED}.get(status)
            if self.settings.show_sync_mark_in_name
            else None
        )
        name = with_sync_mark(current["name"], mark)
        if name != current["name"] and current["name"]:
            fields[current["name_field"]] = name
        if audit_line:
            fields[AUDIT_FIELD] = self._audit_text(ref, current["audit"], audit_line, at)
        self._call("set_sync_result", lambda sf: _sobject(sf, OBJECT_NAMES[ref.kind]).update(ref.id, fields))

    def close(self, ref: CrmRef, *, won: bool) -> None:
        if ref.kind == "lead":
            self.update_fields(ref, RecordUpdate(lifecycle="won" if won else "lost"))
            return
        rows = self._query("close", self._soql("SELECT Id, IsClosed, IsWon FROM Opportunity WHERE Id = {}", ref.id))
        if not rows:
            raise CrmNotFoundError(f"Salesforce Opportunity {ref.id} does not exist")
        if rows[0].get("IsClosed") and bool(rows[0].get("IsWon")) == won:
            return
        stage = self.settings.salesforce_won_stage if won else self.settings.salesforce_lost_stage
        self._call("close", lambda sf: _sobject(sf, "Opportunity").update(ref.id, {"StageName": stage}))


def record_url(settings: Settings, kind: str, record_id: str) -> str:
    """Where an admin opens a record: the login host forwards to it after sign-in (`startURL`),
    which works for every My Domain without knowing the org's instance URL."""
    return f"{settings.salesforce_login_url}/?startURL=%2F{quote(record_id, safe='')}"
