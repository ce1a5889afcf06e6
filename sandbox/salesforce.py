"""Salesforce simulator: login, REST (sObjects, SOQL, composite, collections), Tooling, on HTTPS.

It follows reference/crm-apis.md part A, not our adapter: simple-salesforce itself, used directly,
gets Salesforce's documented answers (tests/salesforce/test_simulator_with_simple_salesforce.py).

- Login: `POST /services/oauth2/token` (client_credentials with Basic auth, password, JWT bearer
  verified against the connected app's certificate) and the SOAP `login` of
  `/services/Soap/u/{version}` as simple-salesforce sends them.
- REST under `/services/data/v{version}/`: versions, resources, limits, global and object describe,
  sObject CRUD, upsert by external id (201 created / 200 updated (204 before v46) / 300 ambiguous),
  `query` / `queryAll` with a SOQL subset (`sandbox/salesforce_soql.py`) and `nextRecordsUrl`
  paging (2000 per page; `Sforce-Query-Options: batchSize=N` or `page_size` for smaller pages),
  `composite` and `composite/sobjects` collections with per-item results and allOrNone.
- Tooling API: `CustomObject` / `CustomField` create, update, get and query (what the provision
  command uses); the custom schema is built from `crm_schema/salesforce` at start (or left out with
  `provisioned=False`, a fresh org for provisioning tests).
- Errors are JSON lists `[{message, errorCode, fields}]`; every REST answer carries
  `Sforce-Limit-Info: api-usage=N/M`, and usage over the daily limit answers 403
  REQUEST_LIMIT_EXCEEDED. SystemModstamp / LastModifiedDate / LastModifiedById change on every write.
- Control API (besides the framework's reset/state/requests/faults): `POST /_sandbox/expire-sessions`,
  `POST /_sandbox/sessions {"username"}` (a session as any user, e.g. a seller editing in the UI),
  `POST /_sandbox/clock {"now": iso | null}` (freeze the org clock), `POST /_sandbox/page-size
  {"size"}`, `POST /_sandbox/convert-lead/{id}` (a seller converts a lead in the UI).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import itertools
import json
import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import jwt

from sandbox import credentials
from sandbox.salesforce_model import (
    LEAD_STATUSES,
    OPPORTUNITY_STAGES,
    FieldDef,
    IdFactory,
    JsonDict,
    ObjectDef,
    SalesforceApiError,
    add_custom_field,
    add_custom_object,
    coerce,
    format_datetime,
    id_checksum,
    normalize_id,
    parse_datetime_value,
    standard_objects,
)
from sandbox.salesforce_soql import BoolOp, Comparison, DateRange, FieldPath, LikePattern, Not, Query, SoqlError, parse
from sandbox.server import Request, Response, Simulator, empty_response, json_response, route
from sandbox.tls import issue_certificate
from shared.crm.salesforce_schema import (
    PERMISSION_SET_NAME,
    FieldSpec,
    ObjectSpec,
    load_objects,
    load_permission_set,
)

SUPPORTED_VERSIONS = [f"{major}.0" for major in range(31, 67)]
ORG_ID = "00D5g000000SANDBOX"[:15] + "AAA"
SELLER_USERNAME = "sally.seller@sandbox.example"
JWT_CERTIFICATE_NAME = "salesforce-jwt"
_SOAP_NS = {"soapenv": "http://schemas.xmlsoap.org/soap/envelope/", "urn": "urn:partner.soap.sforce.com"}
_MAX_COLLECTION = 200

RestHandler = Callable[["SalesforceSimulator", Request, str], Response]
SimulatorHandler = Callable[["SalesforceSimulator", Request], Response]


def jwt_signing_key_path() -> Path:
    """The sandbox connected app's JWT private key (generated on first use, git-ignored)."""
    return issue_certificate(JWT_CERTIFICATE_NAME, server=False).key_path


def _rest(handler: RestHandler) -> Callable[[SalesforceSimulator, Request], Response]:
    """Version check, session check, API usage count and error rendering for one REST handler."""

    @functools.wraps(handler)
    def wrapper(self: SalesforceSimulator, request: Request) -> Response:
        with self.lock:
            try:
                version = request.path_params.get("version")
                if version is not None and version not in SUPPORTED_VERSIONS:
                    raise SalesforceApiError(404, "NOT_FOUND", "The requested resource does not exist")
                user = self.authenticate(request)
                if not self._nested:
                    self.api_usage += 1
                    if self.api_usage > self.daily_api_limit:
                        raise SalesforceApiError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
                response = handler(self, request, user)
            except SalesforceApiError as error:
                response = json_response(error.status, error.body())
            except SoqlError as error:
                response = json_response(400, [{"message": str(error), "errorCode": error.code}])
            response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_usage}/{self.daily_api_limit}"
            return response

    return wrapper


class SalesforceSimulator(Simulator):
    name = "salesforce"

    def __init__(
        self,
        base_url: str = "",
        *,
        provisioned: bool = True,
        multi_currency: bool = False,
        page_size: int = 2000,
        daily_api_limit: int = 100_000,
    ) -> None:
        self.provisioned = provisioned
        self.multi_currency = multi_currency
        self.default_page_size = page_size
        self.default_daily_api_limit = daily_api_limit
        self._nested = False
        self._nested_user = ""
        self._current_version = "62.0"
        super().__init__(base_url)

    # ---- state ------------------------------------------------------------------------------------
    def reset_records(self) -> None:
        self.ids = IdFactory()
        self.objects: dict[str, ObjectDef] = standard_objects(multi_currency=self.multi_currency)
        self.records: dict[str, dict[str, JsonDict]] = {name: {} for name in self.objects}
        self.sessions: dict[str, str] = {}
        self.cursors: dict[str, tuple[list[JsonDict], int]] = {}
        self.frozen_now: dt.datetime | None = None
        self.page_size = self.default_page_size
        self.daily_api_limit = self.default_daily_api_limit
        self.api_usage = 0
        self._prefixes = itertools.count(0)
        self.tooling_objects: dict[str, JsonDict] = {}  # id -> {Id, DeveloperName, FullName, Metadata}
        self.tooling_fields: dict[str, JsonDict] = {}
        self._last_stamp = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        system = "integration"
        self.integration_user_id = self._insert_user(credentials.SALESFORCE_USERNAME, "Integration", "User", system)
        self.seller_user_id = self._insert_user(SELLER_USERNAME, "Sally", "Seller", system)
        for order, stage in enumerate(OPPORTUNITY_STAGES, start=1):
            self._insert_raw(
                "OpportunityStage",
                {**stage, "MasterLabel": stage["ApiName"], "IsActive": True, "SortOrder": order},
                self.integration_user_id,
            )
        for order, status in enumerate(LEAD_STATUSES, start=1):
            self._insert_raw(
                "LeadStatus", {**status, "MasterLabel": status["ApiName"], "SortOrder": order}, self.integration_user_id
            )
        if self.provisioned:
            self.provision_from_schema()

    def state(self) -> JsonDict:
        return {
            "objects": {name: list(records.values()) for name, records in self.records.items() if records},
            "api_usage": self.api_usage,
            "custom_fields": sorted(item["FullName"] for item in self.tooling_fields.values()),
        }

    def now(self) -> dt.datetime:
        """The org clock: millisecond precision, never going backwards (frozen on request for tie tests)."""
        if self.frozen_now is not None:
            return self.frozen_now
        current = dt.datetime.now(dt.UTC)
        current = current.replace(microsecond=current.microsecond // 1000 * 1000)
        self._last_stamp = max(self._last_stamp, current)
        return self._last_stamp

    def _insert_user(self, username: str, first: str, last: str, _: str) -> str:
        user_id = self.ids.new("005")
        stamp = format_datetime(self.now())
        self.records["User"][user_id] = {
            "Id": user_id,
            "Username": username,
            "FirstName": first,
            "LastName": last,
            "Name": f"{first} {last}",
            "Email": username,
            "IsActive": True,
            "IsDeleted": False,
            "CreatedDate": stamp,
            "CreatedById": user_id,
            "LastModifiedDate": stamp,
            "LastModifiedById": user_id,
            "SystemModstamp": stamp,
        }
        return user_id

    def _insert_raw(self, object_name: str, values: JsonDict, user_id: str) -> str:
        definition = self.objects[object_name]
        record_id = self.ids.new(definition.key_prefix)
        stamp = format_datetime(self.now())
        self.records[object_name][record_id] = {
            "Id": record_id,
            "IsDeleted": False,
            "CreatedDate": stamp,
            "CreatedById": user_id,
            "LastModifiedDate": stamp,
            "LastModifiedById": user_id,
            "SystemModstamp": stamp,
            **values,
        }
        return record_id

    def provision_from_schema(self) -> None:
        """What a completed `python -m shared salesforce provision` leaves in an org."""
        for spec in load_objects():
            if spec.custom and spec.name not in self.objects:
                self._tooling_create_object(spec)
            for item in spec.fields:
                if self.objects[spec.name].field(item.name) is None:
                    self._tooling_create_field(item)
        permissions = load_permission_set()
        user = self.integration_user_id
        parent = self._create("PermissionSet", {"Name": PERMISSION_SET_NAME, "Label": permissions.label}, user)
        for field_name, readable, editable in permissions.field_permissions:
            values = {"ParentId": parent, "SobjectType": field_name.split(".")[0], "Field": field_name}
            self._create("FieldPermissions", {**values, "PermissionsRead": readable, "PermissionsEdit": editable}, user)
        for object_name, flags in permissions.object_permissions:
            self._create("ObjectPermissions", {"ParentId": parent, "SobjectType": object_name, **flags}, user)
        self._create("PermissionSetAssignment", {"AssigneeId": user, "PermissionSetId": parent}, user)

    # ---- errors and faults ------------------------------------------------------------------------------
    def fault_response(self, status: int, request: Request) -> Response:
        if request.path.startswith("/services/oauth2/"):
            return json_response(status, {"error": "server_error", "error_description": "injected fault"})
        bodies = {
            400: ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record or 1 records"),
            401: ("INVALID_SESSION_ID", "Session expired or invalid"),
            403: ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
            404: ("NOT_FOUND", "The requested resource does not exist"),
            500: (
                "UNKNOWN_EXCEPTION",
                "An unexpected error occurred. Please include this ErrorId if you contact support: 0",
            ),
            503: ("SERVER_UNAVAILABLE", "Server is temporarily unavailable, please try again later."),
        }
        code, message = bodies.get(status, ("UNKNOWN_EXCEPTION", f"HTTP {status}"))
        return json_response(status, [{"message": message, "errorCode": code}])

    def not_found_response(self, request: Request) -> Response:
        return json_response(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])

    def unknown_option_response(self, request: Request, name: str) -> Response:
        # Salesforce itself ignores most parameters it does not know; the sandbox refuses them so that
        # a client relying on one the simulator lacks finds out (the error code is the sandbox's choice).
        message = f"Unsupported query parameter '{name}' for this resource"
        return json_response(400, [{"errorCode": "INVALID_QUERY_PARAMETER", "message": message}])

    def method_not_allowed_response(self, request: Request, allowed: list[str]) -> Response:
        message = f"HTTP Method '{request.method}' not allowed. Allowed are {','.join(allowed)}"
        return json_response(405, [{"errorCode": "METHOD_NOT_ALLOWED", "message": message}])

    def authenticate(self, request: Request) -> str:
        if self._nested:
            return self._nested_user
        header = request.header("authorization") or ""
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        user = self.sessions.get(token)
        if user is None:
            raise SalesforceApiError(401, "INVALID_SESSION_ID", "Session expired or invalid")
        return user

    # ---- login ---------------------------------------------------------------------------------------
    def _issue_session(self, user_id: str) -> str:
        token = f"{ORG_ID}!{secrets.token_urlsafe(24)}"
        self.sessions[token] = user_id
        return token

    def _user_by_username(self, username: str | None) -> str | None:
        return next(
            (
                user_id
                for user_id, user in self.records["User"].items()
                if username and user["Username"].lower() == username.lower()
            ),
            None,
        )

    def _token_answer(self, user_id: str) -> Response:
        token = self._issue_session(user_id)
        issued = str(int(dt.datetime.now(dt.UTC).timestamp() * 1000))
        return json_response(
            200,
            {
                "access_token": token,
                "instance_url": self.base_url,
                "id": f"{self.base_url}/id/{ORG_ID}/{user_id}",
                "token_type": "Bearer",
                "issued_at": issued,
                "signature": base64.b64encode(secrets.token_bytes(32)).decode(),
            },
        )

    @route("POST", "/services/oauth2/token")
    def oauth_token(self, request: Request) -> Response:
        form = {
            key: values[0] for key, values in parse_qs(request.body.decode("utf-8"), keep_blank_values=True).items()
        }
        grant = form.get("grant_type")

        def refuse(error: str, description: str) -> Response:
            return json_response(400, {"error": error, "error_description": description})

        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        header = request.header("authorization") or ""
        if header.lower().startswith("basic "):
            try:
                client_id, _, client_secret = base64.b64decode(header[6:]).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return refuse("invalid_client", "invalid client credentials")
        with self.lock:
            if grant == "client_credentials":
                if client_id != credentials.SALESFORCE_CLIENT_ID:
                    return refuse("invalid_client_id", "client identifier invalid")
                if client_secret != credentials.SALESFORCE_CLIENT_SECRET:
                    return refuse("invalid_client", "invalid client credentials")
                return self._token_answer(self.integration_user_id)
            if grant == "password":
                if client_id != credentials.SALESFORCE_CLIENT_ID:
                    return refuse("invalid_client_id", "client identifier invalid")
                if client_secret != credentials.SALESFORCE_CLIENT_SECRET:
                    return refuse("invalid_client", "invalid client credentials")
                expected = credentials.SALESFORCE_PASSWORD + credentials.SALESFORCE_SECURITY_TOKEN
                user = self._user_by_username(form.get("username"))
                if user is None or form.get("password") not in (expected, credentials.SALESFORCE_PASSWORD):
                    return refuse("invalid_grant", "authentication failure")
                return self._token_answer(user)
            if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
                return self._jwt_login(form.get("assertion") or "", refuse)
        return refuse("unsupported_grant_type", "grant type not supported")

    def _jwt_login(self, assertion: str, refuse: Callable[[str, str], Response]) -> Response:
        certificate = issue_certificate(JWT_CERTIFICATE_NAME, server=False).cert_path.read_bytes()
        from cryptography import x509

        public_key = x509.load_pem_x509_certificate(certificate).public_key()
        try:
            claims = jwt.decode(
                assertion,
                public_key,  # type: ignore[arg-type]
                algorithms=["RS256"],
                options={"verify_aud": False, "require": ["iss", "sub", "aud", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            return refuse("invalid_grant", "expired authorization code")
        except jwt.PyJWTError:
            return refuse("invalid_grant", "invalid assertion")
        if claims.get("iss") != credentials.SALESFORCE_CLIENT_ID:
            return refuse("invalid_client_id", "client identifier invalid")
        audiences = {"https://login.salesforce.com", "https://test.salesforce.com", self.base_url}
        if str(claims.get("aud", "")).rstrip("/") not in audiences:
            return refuse("invalid_grant", "audience is invalid")
        user = self._user_by_username(str(claims.get("sub")))
        if user is None:
            return refuse("invalid_grant", "user hasn't approved this consumer")
        return self._token_answer(user)

    @route("GET", "/id/{org_id}/{user_id}", query=["format", "oauth_token"])
    def identity(self, request: Request) -> Response:
        """The identity URL a token answer names (`id`): who the token's user is (JSON only here)."""
        if (request.arg("format") or "json") != "json":
            return Response(406, b"Bad_Format: the sandbox answers format=json only", {"Content-Type": "text/plain"})
        with self.lock:
            # The token comes as a bearer header or, documented for this URL, as `oauth_token`.
            token = request.arg("oauth_token")
            user_id = self.sessions.get(token) if token else None
            if user_id is None and token is None:
                with contextlib.suppress(SalesforceApiError):
                    user_id = self.authenticate(request)
            if user_id is None:
                return Response(403, b"Bad_OAuth_Token", {"Content-Type": "text/plain; charset=utf-8"})
            if request.path_params["org_id"] != ORG_ID or normalize_id(request.path_params["user_id"]) != user_id:
                return Response(403, b"Bad_Id", {"Content-Type": "text/plain; charset=utf-8"})
            user = self.records["User"][user_id]
        base = f"{self.base_url}/services/data/v{{version}}"
        return json_response(
            200,
            {
                "id": f"{self.base_url}/id/{ORG_ID}/{user_id}",
                "asserted_user": True,
                "user_id": user_id,
                "organization_id": ORG_ID,
                "username": user["Username"],
                "nick_name": user["Username"].split("@")[0],
                "display_name": user["Name"],
                "email": user["Email"],
                "first_name": user["FirstName"],
                "last_name": user["LastName"],
                "active": user["IsActive"],
                "user_type": "STANDARD",
                "language": "en_US",
                "locale": "en_US",
                "utcOffset": 0,
                "last_modified_date": user["LastModifiedDate"],
                "urls": {
                    "enterprise": f"{self.base_url}/services/Soap/c/{{version}}/{ORG_ID}",
                    "partner": f"{self.base_url}/services/Soap/u/{{version}}/{ORG_ID}",
                    "rest": f"{base}/",
                    "sobjects": f"{base}/sobjects/",
                    "query": f"{base}/query/",
                    "profile": f"{self.base_url}/{user_id}",
                },
            },
        )

    @route("POST", "/services/Soap/u/{version}")
    def soap_login(self, request: Request) -> Response:
        try:
            envelope = ET.fromstring(request.body)
        except ET.ParseError:
            return self._soap_fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out.")
        username = envelope.findtext(".//{urn:partner.soap.sforce.com}username") or ""
        password = envelope.findtext(".//{urn:partner.soap.sforce.com}password") or ""
        with self.lock:
            user = self._user_by_username(username)
            if user is None or password != credentials.SALESFORCE_PASSWORD + credentials.SALESFORCE_SECURITY_TOKEN:
                return self._soap_fault(
                    "INVALID_LOGIN", "Invalid username, password, security token; or user locked out."
                )
            token = self._issue_session(user)
        version = request.path_params["version"]
        body = f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><loginResponse><result><metadataServerUrl>{self.base_url}/services/Soap/m/{version}/{ORG_ID}</metadataServerUrl><passwordExpired>false</passwordExpired><sandbox>true</sandbox><serverUrl>{self.base_url}/services/Soap/u/{version}/{ORG_ID}</serverUrl><sessionId>{token}</sessionId><userId>{user}</userId><userInfo><organizationId>{ORG_ID}</organizationId><userName>{username}</userName></userInfo></result></loginResponse></soapenv:Body></soapenv:Envelope>"""
        return Response(200, body.encode("utf-8"), {"Content-Type": "text/xml; charset=utf-8"})

    @staticmethod
    def _soap_fault(code: str, message: str) -> Response:
        body = f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>sf:{code}</faultcode><faultstring>{code}: {message}</faultstring><detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>{code}</sf:exceptionCode><sf:exceptionMessage>{message}</sf:exceptionMessage></sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"""
        return Response(500, body.encode("utf-8"), {"Content-Type": "text/xml; charset=utf-8"})

    # ---- control API ------------------------------------------------------------------------------------
    @route("POST", "/_sandbox/expire-sessions")
    def control_expire_sessions(self, request: Request) -> Response:
        with self.lock:
            self.sessions.clear()
        return empty_response(204)

    @route("POST", "/_sandbox/sessions")
    def control_session(self, request: Request) -> Response:
        body = request.json() or {}
        with self.lock:
            user = self._user_by_username(body.get("username") or SELLER_USERNAME)
            if user is None:
                return json_response(400, {"error": f"no user {body.get('username')!r}"})
            token = self._issue_session(user)
        return json_response(200, {"access_token": token, "instance_url": self.base_url, "user_id": user})

    @route("POST", "/_sandbox/clock")
    def control_clock(self, request: Request) -> Response:
        body = request.json() or {}
        with self.lock:
            now = body.get("now")
            self.frozen_now = parse_datetime_value(now).astimezone(dt.UTC) if now else None
        return empty_response(204)

    @route("POST", "/_sandbox/page-size")
    def control_page_size(self, request: Request) -> Response:
        size = int((request.json() or {}).get("size", 2000))
        with self.lock:
            self.page_size = max(1, min(size, 2000))
        return empty_response(204)

    @route("POST", "/_sandbox/convert-lead/{lead_id}")
    def control_convert_lead(self, request: Request) -> Response:
        with self.lock:
            try:
                result = self.convert_lead(request.path_params["lead_id"], self.seller_user_id)
            except SalesforceApiError as error:
                return json_response(error.status, error.body())
        return json_response(200, result)

    def convert_lead(self, lead_id: str, user: str) -> JsonDict:
        """What a seller's "Convert" does: account, contact and opportunity from the lead."""
        lead = self._get("Lead", lead_id)
        if lead.get("IsConverted"):
            raise SalesforceApiError(400, "CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")
        account = self._create("Account", {"Name": lead["Company"], "BillingCountry": lead.get("Country")}, user)
        contact = self._create(
            "Contact",
            {
                "FirstName": lead.get("FirstName"),
                "LastName": lead["LastName"],
                "Email": lead.get("Email"),
                "AccountId": account,
            },
            user,
        )
        opportunity = self._create(
            "Opportunity",
            {
                "Name": lead["Company"],
                "AccountId": account,
                "StageName": OPPORTUNITY_STAGES[0]["ApiName"],
                "CloseDate": (self.now().date() + dt.timedelta(days=30)).isoformat(),
            },
            user,
        )
        stored = self.records["Lead"][normalize_id(lead_id)]
        stored.update(
            {
                "IsConverted": True,
                "Status": "Closed - Converted",
                "ConvertedDate": self.now().date().isoformat(),
                "ConvertedAccountId": account,
                "ConvertedContactId": contact,
                "ConvertedOpportunityId": opportunity,
            }
        )
        self._stamp(stored, user)
        return {"accountId": account, "contactId": contact, "opportunityId": opportunity}

    # ---- records -----------------------------------------------------------------------------------------
    def object_def(self, name: str, *, for_query: bool = False) -> ObjectDef:
        found = next((definition for key, definition in self.objects.items() if key.lower() == name.lower()), None)
        if found is None:
            if for_query:
                raise SalesforceApiError(
                    400,
                    "INVALID_TYPE",
                    f"sObject type '{name}' is not supported. If you are attempting to use a custom object, be sure "
                    "to append the '__c' after the entity name. Please reference your WSDL or the describe call for "
                    "the appropriate names.",
                )
            raise SalesforceApiError(404, "NOT_FOUND", "The requested resource does not exist")
        return found

    def _get(self, object_name: str, record_id: str) -> JsonDict:
        definition = self.object_def(object_name)
        normalized = normalize_id(record_id)
        record = self.records[definition.name].get(normalized)
        if record is None:
            raise SalesforceApiError(404, "NOT_FOUND", "The requested resource does not exist")
        if record.get("IsDeleted"):
            raise SalesforceApiError(404, "ENTITY_IS_DELETED", "entity is deleted")
        return record

    def _stamp(self, record: JsonDict, user: str) -> None:
        stamp = format_datetime(self.now())
        record.update({"LastModifiedDate": stamp, "LastModifiedById": user, "SystemModstamp": stamp})

    def _apply(self, definition: ObjectDef, record: JsonDict, data: JsonDict, *, creating: bool) -> JsonDict:
        """Validate `data` against the object's fields; return the coerced changes (canonical names)."""
        if not isinstance(data, dict):
            raise SalesforceApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        changes: JsonDict = {}
        not_writable: list[str] = []
        for key, value in data.items():
            if key == "attributes":
                continue
            item = definition.field(key)
            if item is None:
                raise SalesforceApiError(
                    400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {definition.name}", [key]
                )
            if not (item.createable if creating else item.updateable):
                not_writable.append(item.name)
                continue
            stored = coerce(item, value, definition.name)
            if item.type == "reference" and stored is not None:
                target = item.reference_to[0]
                if stored not in self.records.get(target, {}):
                    raise SalesforceApiError(
                        400,
                        "INVALID_CROSS_REFERENCE_KEY" if creating else "FIELD_INTEGRITY_EXCEPTION",
                        f"{item.label}: id value of incorrect type: {stored}",
                        [item.name],
                    )
            changes[item.name] = stored
        if not_writable:
            raise SalesforceApiError(
                400,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(not_writable)}. Please check the security settings of this "
                "field and verify that it is read/write for your profile or permission set.",
                not_writable,
            )
        merged = {**record, **changes}
        if creating:
            for item in definition.fields.values():
                if item.name not in merged or merged[item.name] is None:
                    if item.type == "boolean" and item.createable:
                        changes[item.name] = merged[item.name] = bool(item.default)
                    elif item.default is not None and item.createable:
                        changes[item.name] = merged[item.name] = item.default
        missing = [
            item.name for item in definition.fields.values() if item.required and merged.get(item.name) in (None, "")
        ]
        if missing:
            raise SalesforceApiError(
                400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing
            )
        for item in definition.fields.values():
            if item.unique and item.name in changes and changes[item.name] is not None:
                value = str(changes[item.name]).lower()
                clash = next(
                    (
                        other_id
                        for other_id, other in self.records[definition.name].items()
                        if other_id != record.get("Id")
                        and not other.get("IsDeleted")
                        and str(other.get(item.name) or "").lower() == value
                    ),
                    None,
                )
                if clash:
                    raise SalesforceApiError(
                        400,
                        "DUPLICATE_VALUE",
                        f"duplicate value found: {item.name} duplicates value on record with id: {clash}",
                        [item.name],
                    )
        return changes

    def _derive(self, definition: ObjectDef, record: JsonDict, changes: JsonDict) -> None:
        """Fields Salesforce computes: names, and IsClosed / IsWon / probability from the stage table."""
        if definition.name in ("Contact", "Lead", "User"):
            record["Name"] = " ".join(part for part in (record.get("FirstName"), record.get("LastName")) if part)
        if definition.name == "Opportunity" and "StageName" in changes:
            stage = next(s for s in OPPORTUNITY_STAGES if s["ApiName"] == record["StageName"])
            record["IsClosed"], record["IsWon"] = stage["IsClosed"], stage["IsWon"]
            record["ForecastCategoryName"] = stage["ForecastCategoryName"]
            if "Probability" not in changes:
                record["Probability"] = float(stage["DefaultProbability"])
        if definition.name == "Lead" and "IsConverted" not in record:
            record["IsConverted"] = False

    def _create(self, object_name: str, data: JsonDict, user: str) -> str:
        definition = self.object_def(object_name)
        if not definition.createable:
            raise SalesforceApiError(
                400, "INVALID_TYPE_FOR_OPERATION", f"entity type {definition.name} does not support insert"
            )
        if "Id" in data or "id" in data:
            raise SalesforceApiError(
                400, "INVALID_FIELD_FOR_INSERT_UPDATE", "Unable to create/update fields: Id.", ["Id"]
            )
        defaults: JsonDict = {"OwnerId": user} if definition.field("OwnerId") else {}
        changes = self._apply(definition, defaults, data, creating=True)
        record_id = self.ids.new(definition.key_prefix)
        stamp = format_datetime(self.now())
        record = {
            **{item.name: None for item in definition.fields.values()},
            **defaults,
            **changes,
            "Id": record_id,
            "IsDeleted": False,
            "CreatedDate": stamp,
            "CreatedById": user,
        }
        self._stamp(record, user)
        self._derive(definition, record, changes)
        self.records[definition.name][record_id] = record
        return record_id

    def _update(self, object_name: str, record_id: str, data: JsonDict, user: str) -> None:
        definition = self.object_def(object_name)
        record = self._get(definition.name, record_id)
        if definition.name == "Lead" and record.get("IsConverted"):
            raise SalesforceApiError(400, "CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")
        changes = self._apply(definition, record, data, creating=False)
        record.update(changes)
        self._derive(definition, record, changes)
        self._stamp(record, user)

    def _delete(self, object_name: str, record_id: str, user: str) -> None:
        definition = self.object_def(object_name)
        record = self._get(definition.name, record_id)
        if not definition.deletable:
            raise SalesforceApiError(
                400, "INVALID_TYPE_FOR_OPERATION", f"entity type {definition.name} does not support delete"
            )
        record["IsDeleted"] = True
        self._stamp(record, user)
        for child in definition.child_relationships:
            for other in self.records[child.child_object].values():
                if other.get(child.field) == record["Id"] and not other.get("IsDeleted"):
                    if child.cascade_delete:
                        other["IsDeleted"] = True
                    else:
                        other[child.field] = None
                    self._stamp(other, user)

    def _find_by_external_id(self, definition: ObjectDef, field_name: str, value: str) -> list[str]:
        item = definition.field(field_name)
        if item is None or not (item.external_id or item.name == "Id"):
            raise SalesforceApiError(
                404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {field_name}"
            )
        lowered = value.lower()
        return [
            record_id
            for record_id, record in self.records[definition.name].items()
            if not record.get("IsDeleted") and str(record.get(item.name) or "").lower() == lowered
        ]

    def _upsert(self, object_name: str, field_name: str, value: str, data: JsonDict, user: str) -> tuple[str, bool]:
        definition = self.object_def(object_name)
        matches = self._find_by_external_id(definition, field_name, value)
        if len(matches) > 1:
            raise _MultipleChoices(
                [f"/services/data/v{self._version}/sobjects/{definition.name}/{match}" for match in matches]
            )
        item = definition.field(field_name)
        assert item is not None
        body = {key: val for key, val in data.items() if key.lower() != item.name.lower()}
        if matches:
            self._update(definition.name, matches[0], body, user)
            return matches[0], False
        return self._create(definition.name, {**body, item.name: value}, user), True

    def _shape(self, definition: ObjectDef, record: JsonDict, fields: Iterable[str] | None = None) -> JsonDict:
        row: JsonDict = {
            "attributes": {"type": definition.name, "url": self._record_url(definition.name, record["Id"])}
        }
        names = list(fields) if fields is not None else [item.name for item in definition.fields.values()]
        for name in names:
            item = definition.field(name)
            if item is None:
                raise SalesforceApiError(400, "INVALID_FIELD", f"No such column '{name}' on entity '{definition.name}'")
            row[item.name] = record.get(item.name)
        return row

    def _record_url(self, object_name: str, record_id: str) -> str:
        return f"/services/data/v{self._version}/sobjects/{object_name}/{record_id}"

    @property
    def _version(self) -> str:
        return self._current_version

    # ---- REST routes -----------------------------------------------------------------------------------
    @route("GET", "/services/data")
    def versions(self, request: Request) -> Response:
        return json_response(
            200,
            [
                {"label": f"v{version}", "url": f"/services/data/v{version}", "version": version}
                for version in SUPPORTED_VERSIONS
            ],
        )

    @route("GET", "/services/data/v{version}")
    @_rest
    def resources(self, request: Request, user: str) -> Response:
        version = request.path_params["version"]
        names = ["sobjects", "query", "queryAll", "composite", "limits", "tooling"]
        return json_response(200, {name: f"/services/data/v{version}/{name}" for name in names})

    @route("GET", "/services/data/v{version}/limits")
    @_rest
    def limits(self, request: Request, user: str) -> Response:
        daily = {"Max": self.daily_api_limit, "Remaining": max(0, self.daily_api_limit - self.api_usage)}
        return json_response(200, {"DailyApiRequests": daily})

    @route("GET", "/services/data/v{version}/sobjects")
    @_rest
    def describe_global(self, request: Request, user: str) -> Response:
        version = request.path_params["version"]
        return json_response(
            200,
            {
                "encoding": "UTF-8",
                "maxBatchSize": _MAX_COLLECTION,
                "sobjects": [definition.summary(version) for definition in self.objects.values()],
            },
        )

    @route("GET", "/services/data/v{version}/sobjects/{sobject}/describe")
    @_rest
    def describe_object(self, request: Request, user: str) -> Response:
        definition = self.object_def(request.path_params["sobject"])
        return json_response(200, definition.describe(request.path_params["version"]))

    @route("GET", "/services/data/v{version}/sobjects/{sobject}")
    @_rest
    def object_metadata(self, request: Request, user: str) -> Response:
        definition = self.object_def(request.path_params["sobject"])
        return json_response(
            200, {"objectDescribe": definition.summary(request.path_params["version"]), "recentItems": []}
        )

    @route("POST", "/services/data/v{version}/sobjects/{sobject}")
    @_rest
    def create(self, request: Request, user: str) -> Response:
        self._current_version = request.path_params["version"]
        record_id = self._create(request.path_params["sobject"], self._body(request), user)
        return json_response(
            201,
            {"id": record_id, "success": True, "errors": []},
            {"Location": self._record_url(request.path_params["sobject"], record_id)},
        )

    @route("GET", "/services/data/v{version}/sobjects/{sobject}/{record_id}", query=["fields"])
    @_rest
    def get_record(self, request: Request, user: str) -> Response:
        self._current_version = request.path_params["version"]
        definition = self.object_def(request.path_params["sobject"])
        record = self._get(definition.name, request.path_params["record_id"])
        fields = request.arg("fields")
        return json_response(200, self._shape(definition, record, fields.split(",") if fields else None))

    @route("PATCH", "/services/data/v{version}/sobjects/{sobject}/{record_id}")
    @_rest
    def update(self, request: Request, user: str) -> Response:
        self._update(request.path_params["sobject"], request.path_params["record_id"], self._body(request), user)
        return empty_response(204)

    @route("DELETE", "/services/data/v{version}/sobjects/{sobject}/{record_id}")
    @_rest
    def delete(self, request: Request, user: str) -> Response:
        self._delete(request.path_params["sobject"], request.path_params["record_id"], user)
        return empty_response(204)

    @route("GET", "/services/data/v{version}/sobjects/{sobject}/{field}/{value:path}")
    @_rest
    def get_by_external_id(self, request: Request, user: str) -> Response:
        self._current_version = request.path_params["version"]
        definition = self.object_def(request.path_params["sobject"])
        matches = self._find_by_external_id(
            definition, request.path_params["field"], unquote(request.path_params["value"])
        )
        if not matches:
            raise SalesforceApiError(404, "NOT_FOUND", "The requested resource does not exist")
        if len(matches) > 1:
            return json_response(300, [self._record_url(definition.name, match) for match in matches])
        return json_response(200, self._shape(definition, self.records[definition.name][matches[0]]))

    @route("PATCH", "/services/data/v{version}/sobjects/{sobject}/{field}/{value:path}")
    @_rest
    def upsert(self, request: Request, user: str) -> Response:
        version = request.path_params["version"]
        self._current_version = version
        try:
            record_id, created = self._upsert(
                request.path_params["sobject"],
                request.path_params["field"],
                unquote(request.path_params["value"]),
                self._body(request),
                user,
            )
        except _MultipleChoices as ambiguous:
            return json_response(300, ambiguous.urls)
        if created:
            return json_response(201, {"id": record_id, "success": True, "errors": [], "created": True})
        # Since API v46 an update by external id answers 200 with a body; before, 204 without one.
        if float(version) >= 46.0:
            return json_response(200, {"id": record_id, "success": True, "errors": [], "created": False})
        return empty_response(204)

    @staticmethod
    def _body(request: Request) -> JsonDict:
        try:
            body = request.json()
        except (ValueError, UnicodeDecodeError):
            raise SalesforceApiError(
                400, "JSON_PARSER_ERROR", "Unexpected character: the request body is not valid JSON"
            ) from None
        if not isinstance(body, dict):
            raise SalesforceApiError(
                400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object value"
            )
        return body

    # ---- query ------------------------------------------------------------------------------------------
    @route("GET", "/services/data/v{version}/query", query=["q"])
    @route("GET", "/services/data/v{version}/queryAll", query=["q"])
    @_rest
    def query(self, request: Request, user: str) -> Response:
        version = request.path_params["version"]
        self._current_version = version
        soql = request.arg("q")
        if not soql:
            raise SalesforceApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
        include_deleted = "/queryAll" in request.path
        rows, total = self.run_query(soql, include_deleted=include_deleted)
        return json_response(200, self._page(rows, total, self._page_size(request), version, 0, None))

    @route("GET", "/services/data/v{version}/query/{locator}")
    @route("GET", "/services/data/v{version}/queryAll/{locator}")
    @_rest
    def query_more(self, request: Request, user: str) -> Response:
        cursor, _, position = request.path_params["locator"].rpartition("-")
        if cursor not in self.cursors or not position.isdigit():
            raise SalesforceApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        rows, page_size = self.cursors[cursor]
        return json_response(
            200, self._page(rows, len(rows), page_size, request.path_params["version"], int(position), cursor)
        )

    def _page_size(self, request: Request) -> int:
        options = request.header("sforce-query-options") or ""
        found = re.search(r"batchSize=(\d+)", options)
        if found:  # Salesforce honours 200..2000 (a hint, not a guarantee)
            return max(200, min(2000, int(found.group(1)), self.page_size if self.page_size < 200 else 2000))
        return self.page_size

    def _page(
        self, rows: list[JsonDict], total: int, page_size: int, version: str, start: int, cursor: str | None
    ) -> JsonDict:
        end = start + page_size
        page: JsonDict = {"totalSize": total, "done": end >= len(rows), "records": rows[start:end]}
        if end < len(rows):
            cursor = cursor or "01g" + secrets.token_hex(6).upper()[:12]
            self.cursors[cursor] = (rows, page_size)
            page["nextRecordsUrl"] = f"/services/data/v{version}/query/{cursor}-{end}"
        elif cursor:
            self.cursors.pop(cursor, None)
        return page

    def run_query(
        self,
        soql: str,
        *,
        include_deleted: bool = False,
        objects: dict[str, ObjectDef] | None = None,
        records: dict[str, dict[str, JsonDict]] | None = None,
    ) -> tuple[list[JsonDict], int]:
        query = parse(soql, today=self.now().date())
        executor = _QueryExecutor(self, objects or self.objects, records or self.records, include_deleted)
        return executor.run(query)

    # ---- composite --------------------------------------------------------------------------------------
    @route("POST", "/services/data/v{version}/composite/sobjects")
    @route("PATCH", "/services/data/v{version}/composite/sobjects")
    @_rest
    def collection_write(self, request: Request, user: str) -> Response:
        body = self._body(request)
        records = self._collection_records(body)
        creating = request.method == "POST"

        def write(item: JsonDict) -> JsonDict:
            object_name = (item.get("attributes") or {}).get("type")
            if not object_name:
                raise SalesforceApiError(400, "INVALID_FIELD", "No type provided in attributes", ["attributes"])
            data = {key: value for key, value in item.items() if key not in ("attributes", "id", "Id")}
            if creating:
                if item.get("id") or item.get("Id"):
                    raise SalesforceApiError(400, "INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
                return {"id": self._create(object_name, data, user), "success": True, "errors": []}
            record_id = item.get("id") or item.get("Id")
            if not record_id:
                raise SalesforceApiError(400, "MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
            self._update(object_name, str(record_id), data, user)
            return {"id": normalize_id(str(record_id)), "success": True, "errors": []}

        return json_response(200, self._run_collection(records, bool(body.get("allOrNone")), write))

    @route("PATCH", "/services/data/v{version}/composite/sobjects/{sobject}/{field}")
    @_rest
    def collection_upsert(self, request: Request, user: str) -> Response:
        self._current_version = request.path_params["version"]
        body = self._body(request)
        records = self._collection_records(body)
        definition = self.object_def(request.path_params["sobject"])
        field_name = request.path_params["field"]

        def write(item: JsonDict) -> JsonDict:
            key = next((value for name, value in item.items() if name.lower() == field_name.lower()), None)
            if key in (None, ""):
                raise SalesforceApiError(400, "MISSING_ARGUMENT", f"{field_name} not specified", [field_name])
            data = {name: value for name, value in item.items() if name != "attributes"}
            try:
                record_id, created = self._upsert(definition.name, field_name, str(key), data, user)
            except _MultipleChoices:
                raise SalesforceApiError(
                    300,
                    "DUPLICATE_EXTERNAL_ID",
                    f"{field_name}: more than one record found for external id field",
                    [field_name],
                ) from None
            return {"id": record_id, "success": True, "errors": [], "created": created}

        return json_response(200, self._run_collection(records, bool(body.get("allOrNone")), write))

    @route("DELETE", "/services/data/v{version}/composite/sobjects", query=["ids", "allOrNone"])
    @_rest
    def collection_delete(self, request: Request, user: str) -> Response:
        ids = [value for value in (request.arg("ids") or "").split(",") if value]
        if not ids or len(ids) > _MAX_COLLECTION:
            raise SalesforceApiError(400, "INVALID_FIELD", "ids: give 1 to 200 record ids", ["ids"])

        def remove(record_id: str) -> JsonDict:
            normalized = normalize_id(record_id)
            owner = next((name for name, records in self.records.items() if normalized in records), None)
            if owner is None:
                raise SalesforceApiError(404, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
            self._delete(owner, normalized, user)
            return {"id": normalized, "success": True, "errors": []}

        all_or_none = (request.arg("allOrNone") or "false").lower() == "true"
        return json_response(200, self._run_collection(ids, all_or_none, remove))

    @route("GET", "/services/data/v{version}/composite/sobjects/{sobject}", query=["ids", "fields"])
    @route("POST", "/services/data/v{version}/composite/sobjects/{sobject}")
    @_rest
    def collection_retrieve(self, request: Request, user: str) -> Response:
        """Retrieve by ids: `?ids=&fields=` on GET, `{"ids": [], "fields": []}` on POST (for long id lists)."""
        self._current_version = request.path_params["version"]
        definition = self.object_def(request.path_params["sobject"])
        if request.method == "POST":
            body = self._body(request)
            ids, fields = body.get("ids"), body.get("fields")
        else:
            ids = [item for item in (request.arg("ids") or "").split(",") if item]
            fields = [item for item in (request.arg("fields") or "").split(",") if item]
        for name, value in (("ids", ids), ("fields", fields)):
            if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
                raise SalesforceApiError(400, "MISSING_ARGUMENT", f"{name}: give a non-empty list", [name])
        assert isinstance(ids, list) and isinstance(fields, list)
        rows: list[JsonDict | None] = []
        for record_id in ids:
            record = self.records[definition.name].get(normalize_id(record_id))
            rows.append(self._shape(definition, record, fields) if record and not record.get("IsDeleted") else None)
        return json_response(200, rows)

    # ---- replication: get updated / get deleted --------------------------------------------------
    def _replication_window(self, request: Request) -> tuple[dt.datetime, dt.datetime]:
        """`start` / `end` (ISO 8601), seconds ignored as Salesforce does; at most 30 days back."""
        window: list[dt.datetime] = []
        for name in ("start", "end"):
            text = request.arg(name)
            if not text:
                raise SalesforceApiError(400, "MISSING_ARGUMENT", f"{name} parameter must be specified", [name])
            try:
                moment = parse_datetime_value(text).astimezone(dt.UTC)
            except ValueError:
                raise SalesforceApiError(
                    400, "INVALID_REPLICATION_DATE", f"{name} is not a valid date: {text}"
                ) from None
            window.append(moment.replace(second=0, microsecond=0))
        start, end = window
        if end <= start:
            raise SalesforceApiError(400, "INVALID_REPLICATION_DATE", "endDate must chronologically follow startDate")
        if start < self.now() - dt.timedelta(days=30):
            raise SalesforceApiError(400, "INVALID_REPLICATION_DATE", "startDate cannot be more than 30 days ago")
        return start, min(end, self.now().replace(second=0, microsecond=0) + dt.timedelta(minutes=1))

    def _changed_between(self, request: Request, *, deleted: bool) -> tuple[list[JsonDict], dt.datetime, dt.datetime]:
        definition = self.object_def(request.path_params["sobject"])
        start, end = self._replication_window(request)
        changed = [
            record
            for record in self.records[definition.name].values()
            if bool(record.get("IsDeleted")) == deleted
            and start <= parse_datetime_value(record["SystemModstamp"]) < end
        ]
        return changed, start, end

    @route("GET", "/services/data/v{version}/sobjects/{sobject}/updated", query=["start", "end"])
    @_rest
    def get_updated(self, request: Request, user: str) -> Response:
        changed, _, end = self._changed_between(request, deleted=False)
        return json_response(
            200, {"ids": [record["Id"] for record in changed], "latestDateCovered": format_datetime(end)}
        )

    @route("GET", "/services/data/v{version}/sobjects/{sobject}/deleted", query=["start", "end"])
    @_rest
    def get_deleted(self, request: Request, user: str) -> Response:
        changed, start, end = self._changed_between(request, deleted=True)
        return json_response(
            200,
            {
                "deletedRecords": [{"id": item["Id"], "deletedDate": item["SystemModstamp"]} for item in changed],
                "earliestDateAvailable": format_datetime(start),
                "latestDateCovered": format_datetime(end),
            },
        )

    def _snapshot(self) -> dict[str, dict[str, JsonDict]]:
        """Every record as it is now, for an allOrNone rollback: field values are immutable
        (strings, numbers, booleans), so a copy of each record's dict is enough, and far cheaper
        than a deep copy."""
        return {name: {key: dict(record) for key, record in table.items()} for name, table in self.records.items()}

    def _collection_records(self, body: JsonDict) -> list[JsonDict]:
        records = body.get("records")
        if not isinstance(records, list) or not records:
            raise SalesforceApiError(400, "INVALID_FIELD", "records: a non-empty list is required", ["records"])
        if len(records) > _MAX_COLLECTION:
            raise SalesforceApiError(
                400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into this call"
            )
        return records

    def _run_collection(
        self, items: list[Any], all_or_none: bool, operation: Callable[[Any], JsonDict]
    ) -> list[JsonDict]:
        snapshot = self._snapshot() if all_or_none else None
        results: list[JsonDict] = []
        failed = False
        for item in items:
            try:
                results.append(operation(item))
            except SalesforceApiError as error:
                failed = True
                results.append({"id": None, "success": False, "errors": [error.collection_error()]})
        if failed and snapshot is not None:
            self.records = snapshot
            rolled_back = {
                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "message": "Record rolled back because not all records were valid and the request was using AllOrNone header",
                "fields": [],
            }
            results = [
                result if not result["success"] else {"id": None, "success": False, "errors": [rolled_back]}
                for result in results
            ]
        return results

    @route("POST", "/services/data/v{version}/composite")
    @_rest
    def composite(self, request: Request, user: str) -> Response:
        body = self._body(request)
        subrequests = body.get("compositeRequest")
        if not isinstance(subrequests, list) or not subrequests or len(subrequests) > 25:
            raise SalesforceApiError(
                400, "INVALID_FIELD", "compositeRequest: give 1 to 25 subrequests", ["compositeRequest"]
            )
        all_or_none = bool(body.get("allOrNone"))
        snapshot = self._snapshot() if all_or_none else None
        results: dict[str, Any] = {}
        responses: list[JsonDict] = []
        failed = False
        for sub in subrequests:
            reference = str(sub.get("referenceId") or "")
            if failed and all_or_none:
                responses.append(_halted(reference))
                continue
            url = _resolve_references(str(sub.get("url") or ""), results)
            sub_body = (
                json.loads(_resolve_references(json.dumps(sub.get("body")), results))
                if sub.get("body") is not None
                else None
            )
            response = self._dispatch_nested(str(sub.get("method") or "GET").upper(), url, sub_body, user)
            payload = json.loads(response.body) if response.body else None
            results[reference] = payload
            responses.append(
                {"body": payload, "httpHeaders": {}, "httpStatusCode": response.status, "referenceId": reference}
            )
            failed = failed or response.status >= 400
        if failed and snapshot is not None:
            self.records = snapshot
            responses = [_halted(item["referenceId"]) if item["httpStatusCode"] < 400 else item for item in responses]
        return json_response(200, {"compositeResponse": responses})

    def _dispatch_nested(self, method: str, url: str, body: Any, user: str) -> Response:
        path, _, query = url.partition("?")
        request = Request(
            method=method,
            path=path,
            query=parse_qs(query, keep_blank_values=True),
            headers={},
            body=json.dumps(body).encode() if body is not None else b"",
            raw_query=query,
        )
        self._nested, self._nested_user = True, user
        try:
            return self.dispatch(request)
        finally:
            self._nested = False

    # ---- Tooling API -------------------------------------------------------------------------------------
    @route("POST", "/services/data/v{version}/tooling/sobjects/{sobject}")
    @_rest
    def tooling_create(self, request: Request, user: str) -> Response:
        body = self._body(request)
        full_name = str(body.get("FullName") or "")
        metadata = body.get("Metadata")
        if not full_name or not isinstance(metadata, dict):
            raise SalesforceApiError(
                400,
                "REQUIRED_FIELD_MISSING",
                "Required fields are missing: [FullName, Metadata]",
                ["FullName", "Metadata"],
            )
        kind = request.path_params["sobject"]
        if kind == "CustomObject":
            if (
                any(item["FullName"].lower() == full_name.lower() for item in self.tooling_objects.values())
                or full_name in self.objects
            ):
                raise SalesforceApiError(
                    400, "DUPLICATE_DEVELOPER_NAME", f"There is already an object named {full_name}."
                )
            name_field = metadata.get("nameField") or {}
            spec = ObjectSpec(
                name=full_name,
                custom=True,
                label=str(metadata.get("label") or full_name),
                plural_label=str(metadata.get("pluralLabel") or full_name),
                description=str(metadata.get("description") or ""),
                name_field_label=str(name_field.get("label") or "Name"),
            )
            new_id = self._tooling_create_object(spec)
        elif kind == "CustomField":
            object_name, _, field_name = full_name.partition(".")
            if not field_name.endswith("__c"):
                raise SalesforceApiError(
                    400, "INVALID_FIELD", f"FullName must be Object.Field__c: {full_name}", ["FullName"]
                )
            target = self.object_def(object_name, for_query=True)
            if target.field(field_name) is not None:
                raise SalesforceApiError(
                    400, "DUPLICATE_DEVELOPER_NAME", f"There is already a field named {field_name} on {target.name}."
                )
            new_id = self._tooling_create_field(field_spec_from_metadata(target.name, field_name, metadata))
        else:
            raise SalesforceApiError(404, "NOT_FOUND", "The requested resource does not exist")
        return json_response(201, {"id": new_id, "success": True, "errors": [], "warnings": [], "infos": []})

    @route("PATCH", "/services/data/v{version}/tooling/sobjects/CustomField/{record_id}")
    @_rest
    def tooling_update_field(self, request: Request, user: str) -> Response:
        entry = self.tooling_fields.get(normalize_id(request.path_params["record_id"]))
        if entry is None:
            raise SalesforceApiError(404, "NOT_FOUND", "The requested resource does not exist")
        metadata = self._body(request).get("Metadata")
        if not isinstance(metadata, dict):
            raise SalesforceApiError(
                400, "REQUIRED_FIELD_MISSING", "Required fields are missing: [Metadata]", ["Metadata"]
            )
        object_name, _, field_name = entry["FullName"].partition(".")
        spec = field_spec_from_metadata(object_name, field_name, metadata)
        existing = self.objects[object_name].field(field_name)
        if existing is not None and existing.type != add_custom_field_type(spec):
            raise SalesforceApiError(
                400, "FIELD_INTEGRITY_EXCEPTION", f"Cannot change the type of {entry['FullName']} here"
            )
        add_custom_field(self.objects, spec)
        entry["Metadata"] = spec.tooling_metadata()
        return empty_response(204)

    @route("GET", "/services/data/v{version}/tooling/sobjects/{sobject}/{record_id}")
    @_rest
    def tooling_get(self, request: Request, user: str) -> Response:
        store = self.tooling_fields if request.path_params["sobject"] == "CustomField" else self.tooling_objects
        entry = store.get(normalize_id(request.path_params["record_id"]))
        if entry is None:
            raise SalesforceApiError(404, "NOT_FOUND", "The requested resource does not exist")
        return json_response(200, {"attributes": {"type": request.path_params["sobject"]}, **entry})

    @route("GET", "/services/data/v{version}/tooling/query", query=["q"])
    @_rest
    def tooling_query(self, request: Request, user: str) -> Response:
        self._current_version = request.path_params["version"]
        soql = request.arg("q") or ""
        objects, records = self._tooling_tables()
        rows, total = self.run_query(soql, objects=objects, records=records)
        return json_response(
            200, {**self._page(rows, total, 2000, request.path_params["version"], 0, None), "entityTypeName": None}
        )

    def _tooling_tables(self) -> tuple[dict[str, ObjectDef], dict[str, dict[str, JsonDict]]]:
        def table(name: str, prefix: str, columns: list[str]) -> ObjectDef:
            definition = ObjectDef(name=name, key_prefix=prefix)
            definition.add(FieldDef(name="Id", type="id", length=18))
            for column in columns:
                definition.add(FieldDef(name=column, type="string", length=255))
            return definition

        objects = {
            "CustomObject": table("CustomObject", "01I", ["DeveloperName", "NamespacePrefix"]),
            "CustomField": table("CustomField", "00N", ["DeveloperName", "TableEnumOrId", "NamespacePrefix"]),
        }
        strip = {"FullName", "Metadata"}
        records = {
            "CustomObject": {
                key: {k: v for k, v in value.items() if k not in strip} for key, value in self.tooling_objects.items()
            },
            "CustomField": {
                key: {k: v for k, v in value.items() if k not in strip} for key, value in self.tooling_fields.items()
            },
        }
        return objects, records

    def _tooling_create_object(self, spec: ObjectSpec) -> str:
        add_custom_object(self.objects, spec, self._prefixes)
        self.records.setdefault(spec.name, {})
        object_id = self.ids.new("01I")
        self.tooling_objects[object_id] = {
            "Id": object_id,
            "DeveloperName": spec.name.removesuffix("__c"),
            "NamespacePrefix": None,
            "FullName": spec.name,
            "Metadata": spec.tooling_metadata(),
        }
        return object_id

    def _tooling_create_field(self, spec: FieldSpec) -> str:
        add_custom_field(self.objects, spec)
        for record in self.records[spec.object_name].values():
            record.setdefault(spec.name, False if spec.type == "Checkbox" else None)
        table = next(
            (key for key, value in self.tooling_objects.items() if value["FullName"] == spec.object_name),
            spec.object_name,
        )
        field_id = self.ids.new("00N")
        self.tooling_fields[field_id] = {
            "Id": field_id,
            "DeveloperName": spec.name.removesuffix("__c"),
            "TableEnumOrId": table,
            "NamespacePrefix": None,
            "FullName": spec.full_name,
            "Metadata": spec.tooling_metadata(),
        }
        return field_id


class _MultipleChoices(Exception):
    def __init__(self, urls: list[str]) -> None:
        super().__init__("more than one record")
        self.urls = urls


def _halted(reference: str) -> JsonDict:
    return {
        "body": [
            {
                "errorCode": "PROCESSING_HALTED",
                "message": "The transaction was rolled back since another operation in the same transaction failed.",
            }
        ],
        "httpHeaders": {},
        "httpStatusCode": 400,
        "referenceId": reference,
    }


def _resolve_references(text: str, results: dict[str, Any]) -> str:
    """Replace `@{ref.id}` / `@{ref.records[0].Id}` with values from earlier subrequest results."""

    def value(match: re.Match[str]) -> str:
        reference, *path = re.split(r"\.|\[(\d+)\]", match.group(1))
        current: Any = results.get(reference)
        for part in (p for p in path if p):
            current = current[int(part)] if part.isdigit() and isinstance(current, list) else (current or {}).get(part)
        return "" if current is None else str(current)

    return re.sub(r"@\{([^}]+)\}", value, text)


def add_custom_field_type(spec: FieldSpec) -> str:
    from sandbox.salesforce_model import field_from_spec

    return field_from_spec(spec).type


def field_spec_from_metadata(object_name: str, field_name: str, metadata: JsonDict) -> FieldSpec:
    """A Tooling API `Metadata` body (the same shape as the source XML) as a FieldSpec."""
    value_set = metadata.get("valueSet") or {}
    values = (value_set.get("valueSetDefinition") or {}).get("value") or []
    if not metadata.get("type") or not metadata.get("label"):
        raise SalesforceApiError(
            400, "REQUIRED_FIELD_MISSING", "Required fields are missing: [type, label]", ["type", "label"]
        )
    return FieldSpec(
        object_name=object_name,
        name=field_name,
        label=str(metadata["label"]),
        type=str(metadata["type"]),
        description=str(metadata.get("description") or ""),
        length=int(metadata["length"]) if metadata.get("length") is not None else None,
        default_value=str(metadata["defaultValue"]).lower() if metadata.get("defaultValue") is not None else None,
        external_id=bool(metadata.get("externalId")),
        unique=bool(metadata.get("unique")),
        required=bool(metadata.get("required")),
        # An inactive value stays on old records but is neither offered nor described.
        picklist_values=tuple(str(value.get("fullName")) for value in values if value.get("isActive") is not False),
        restricted_picklist=bool(value_set.get("restricted")),
        reference_to=metadata.get("referenceTo"),
        relationship_name=metadata.get("relationshipName"),
        delete_constraint=metadata.get("deleteConstraint"),
        visible_lines=metadata.get("visibleLines"),
    )


class _QueryExecutor:
    """Runs a parsed SOQL query over the simulator's records."""

    def __init__(
        self,
        simulator: SalesforceSimulator,
        objects: dict[str, ObjectDef],
        records: dict[str, dict[str, JsonDict]],
        include_deleted: bool,
    ) -> None:
        self.simulator = simulator
        self.objects = objects
        self.records = records
        self.include_deleted = include_deleted
        self._resolved: dict[tuple[str, str], tuple[list[tuple[FieldDef, ObjectDef]], FieldDef]] = {}

    def object_def(self, name: str) -> ObjectDef:
        found = next((definition for key, definition in self.objects.items() if key.lower() == name.lower()), None)
        if found is None:
            raise SalesforceApiError(
                400,
                "INVALID_TYPE",
                f"sObject type '{name}' is not supported. If you are attempting to use a custom object, be sure to "
                "append the '__c' after the entity name. Please reference your WSDL or the describe call for the "
                "appropriate names.",
            )
        return found

    def resolve(self, definition: ObjectDef, path: FieldPath) -> tuple[list[tuple[FieldDef, ObjectDef]], FieldDef]:
        """The relationship hops and the final field of `path`, or INVALID_FIELD (once per query and path)."""
        key = (definition.name, path.text)
        if key not in self._resolved:
            self._resolved[key] = self._resolve(definition, path)
        return self._resolved[key]

    def _resolve(self, definition: ObjectDef, path: FieldPath) -> tuple[list[tuple[FieldDef, ObjectDef]], FieldDef]:
        hops: list[tuple[FieldDef, ObjectDef]] = []
        current = definition
        for part in path.parts[:-1]:
            lookup = current.relationship(part)
            if lookup is None:
                raise _invalid_field(path.text, current.name)
            target = self.objects.get(lookup.reference_to[0])
            if target is None:
                raise _invalid_field(path.text, current.name)
            hops.append((lookup, target))
            current = target
        final = current.field(path.parts[-1])
        if final is None:
            raise _invalid_field(path.text, current.name)
        return hops, final

    def value(self, definition: ObjectDef, record: JsonDict, path: FieldPath) -> tuple[Any, FieldDef]:
        hops, final = self.resolve(definition, path)
        current: JsonDict | None = record
        for lookup, target in hops:
            target_id = current.get(lookup.name) if current else None
            current = self.records.get(target.name, {}).get(target_id) if target_id else None
        return (current.get(final.name) if current else None), final

    def run(self, query: Query, parent: tuple[str, str] | None = None) -> tuple[list[JsonDict], int]:
        definition = self.object_def(query.object_name)
        for item in query.fields:
            if isinstance(item, FieldPath):
                self.resolve(definition, item)
        table = self.records.get(definition.name, {})
        ids = _ids_wanted(query.where)
        rows = table.values() if ids is None else [table[key] for key in ids if key in table]
        candidates = [
            record
            for record in rows
            if (self.include_deleted or not record.get("IsDeleted"))
            and (parent is None or record.get(parent[0]) == parent[1])
        ]
        if query.where is not None:
            self.validate(definition, query.where)
            candidates = [record for record in candidates if self.matches(definition, record, query.where)]
        for order in reversed(query.order_by):
            self.resolve(definition, order.path)
            nulls_last = order.nulls_last if order.nulls_last is not None else order.descending
            present = [r for r in candidates if self.value(definition, r, order.path)[0] is not None]
            absent = [r for r in candidates if self.value(definition, r, order.path)[0] is None]
            present.sort(key=functools.partial(self._order_key, definition, order.path), reverse=order.descending)
            candidates = present + absent if nulls_last else absent + present
        if query.offset:
            candidates = candidates[query.offset :]
        if query.limit is not None:
            candidates = candidates[: query.limit]
        if query.count_only:
            return [], len(candidates)
        return [self.shape(definition, record, query) for record in candidates], len(candidates)

    def _order_key(self, definition: ObjectDef, path: FieldPath, record: JsonDict) -> Any:
        stored, item = self.value(definition, record, path)
        return _comparable(item, stored)

    def shape(self, definition: ObjectDef, record: JsonDict, query: Query) -> JsonDict:
        row: JsonDict = {
            "attributes": {"type": definition.name, "url": self.simulator._record_url(definition.name, record["Id"])}
        }
        for item in query.fields:
            if isinstance(item, Query):
                child = definition.child_relationship(item.object_name)
                if child is None:
                    raise SalesforceApiError(
                        400,
                        "INVALID_TYPE",
                        f"Didn't understand relationship '{item.object_name}' in FROM part of query call. If you are "
                        "attempting to use a custom relationship, be sure to append the '__r' after the custom "
                        "relationship name.",
                    )
                sub = Query(
                    child.child_object, item.fields, item.count_only, item.where, item.order_by, item.limit, item.offset
                )
                rows, total = self.run(sub, parent=(child.field, record["Id"]))
                row[child.name] = {"totalSize": total, "done": True, "records": rows} if rows else None
                continue
            self._put(definition, record, row, item.parts)
        return row

    def _put(self, definition: ObjectDef, record: JsonDict | None, row: JsonDict, parts: list[str]) -> None:
        if len(parts) == 1:
            item = definition.field(parts[0])
            assert item is not None
            row[item.name] = record.get(item.name) if record else None
            return
        lookup = definition.relationship(parts[0])
        assert lookup is not None and lookup.relationship_name is not None
        target = self.objects[lookup.reference_to[0]]
        target_id = record.get(lookup.name) if record else None
        related = self.records.get(target.name, {}).get(target_id) if target_id else None
        key = lookup.relationship_name
        if related is None:
            row[key] = None
            return
        nested = row.get(key) or {
            "attributes": {"type": target.name, "url": self.simulator._record_url(target.name, related["Id"])}
        }
        row[key] = nested
        self._put(target, related, nested, parts[1:])

    def validate(self, definition: ObjectDef, condition: Any) -> None:
        if isinstance(condition, BoolOp):
            for operand in condition.operands:
                self.validate(definition, operand)
        elif isinstance(condition, Not):
            self.validate(definition, condition.operand)
        else:
            _, item = self.resolve(definition, condition.path)
            _check_literals(item, condition.operator, condition.value, condition.path.text)

    def matches(self, definition: ObjectDef, record: JsonDict, condition: Any) -> bool:
        if isinstance(condition, BoolOp):
            results = (self.matches(definition, record, operand) for operand in condition.operands)
            return all(results) if condition.operator == "AND" else any(results)
        if isinstance(condition, Not):
            return not self.matches(definition, record, condition.operand)
        assert isinstance(condition, Comparison)
        stored, item = self.value(definition, record, condition.path)
        return _compare(item, stored, condition.operator, condition.value, condition.path.text)


def _ids_wanted(condition: Any) -> list[str] | None:
    """The record ids a WHERE clause limits the rows to (`Id = '...'` / `Id IN (...)` at its top level,
    alone or AND-ed), so that such a query reads those rows instead of the whole table; None if it does not."""
    if isinstance(condition, BoolOp) and condition.operator == "AND":
        return next((found for found in map(_ids_wanted, condition.operands) if found is not None), None)
    if isinstance(condition, Comparison) and condition.path.parts == ["Id"] and condition.operator in ("=", "IN"):
        values = condition.value if condition.operator == "IN" else [condition.value]
        if all(isinstance(value, str) for value in values):
            # Ids compare on their first 15 characters (the 18-character suffix is a checksum).
            return [prefix + id_checksum(prefix) for prefix in dict.fromkeys(value[:15] for value in values)]
    return None


def _invalid_field(name: str, object_name: str) -> SalesforceApiError:
    return SalesforceApiError(
        400,
        "INVALID_FIELD",
        f"No such column '{name}' on entity '{object_name}'. If you are attempting to use a custom field, be sure to "
        "append the '__c' after the custom field name. Please reference your WSDL or the describe call for the "
        "appropriate names.",
    )


def _comparable(item: FieldDef, value: Any) -> Any:
    if value is None:
        return None
    if item.type == "datetime":
        return parse_datetime_value(value) if isinstance(value, str) else value
    if item.type == "date":
        return dt.date.fromisoformat(value) if isinstance(value, str) else value
    if item.type in ("currency", "double", "percent", "int"):
        return Decimal(str(value))
    if item.type == "boolean":
        return bool(value)
    if item.type in ("id", "reference"):
        return str(value)[:15]
    return str(value).lower()


def _literal_fits(item: FieldDef, literal: Any) -> bool:
    if literal is None:
        return True
    if item.type == "datetime":
        return isinstance(literal, dt.datetime | DateRange)
    if item.type == "date":
        return isinstance(literal, dt.date | DateRange) and not isinstance(literal, dt.datetime)
    if item.type in ("currency", "double", "percent", "int"):
        return isinstance(literal, Decimal)
    if item.type == "boolean":
        return isinstance(literal, bool)
    return isinstance(literal, str)


def _check_literals(item: FieldDef, operator: str, literal: Any, name: str) -> None:
    """Refuse a filter whose value does not fit the field's type, as Salesforce does (before reading rows)."""
    if operator == "LIKE":
        if item.type not in ("string", "textarea", "picklist", "url", "email", "phone", "id", "reference"):
            raise SalesforceApiError(400, "INVALID_FIELD", f"invalid operator on field: {name}")
        return
    for value in literal if operator in ("IN", "NOTIN") else [literal]:
        if not _literal_fits(item, value):
            kind = {"datetime": "dateTime"}.get(item.type, item.type)
            quoted = "should not be enclosed in quotes" if isinstance(value, str) else "should be enclosed in quotes"
            raise SalesforceApiError(
                400,
                "INVALID_FIELD",
                f"value of filter criterion for field '{name}' must be of type {kind} and {quoted}",
            )


def _compare(item: FieldDef, stored: Any, operator: str, literal: Any, name: str) -> bool:
    literals = literal if operator in ("IN", "NOTIN") else [literal]
    if operator == "LIKE":
        return stored is not None and isinstance(literal, LikePattern) and bool(literal.regex.match(str(stored)))
    left = _comparable(item, stored)
    if operator in ("IN", "NOTIN"):
        found = any(_equal(item, left, value) for value in literals)
        return found if operator == "IN" else (left is not None and not found)
    if operator == "=":
        return _equal(item, left, literal)
    if operator == "!=":
        return not _equal(item, left, literal)
    if left is None or literal is None:
        return False
    if isinstance(literal, DateRange):
        start: Any = literal.start if item.type == "datetime" else literal.start.date()
        end: Any = literal.end if item.type == "datetime" else literal.end.date()
        return bool({"<": left < start, "<=": left < end, ">": left >= end, ">=": left >= start}[operator])
    right = _comparable(item, literal)
    return bool({"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[operator])


def _equal(item: FieldDef, left: Any, literal: Any) -> bool:
    if literal is None or left is None:
        return left is None and literal is None
    if isinstance(literal, DateRange):
        start: Any = literal.start if item.type == "datetime" else literal.start.date()
        end: Any = literal.end if item.type == "datetime" else literal.end.date()
        return bool(start <= left < end)
    return bool(left == _comparable(item, literal))


def seed_demo(simulator: SalesforceSimulator) -> None:
    """A few demo accounts, contacts and opportunities (two of them syncing), made by the seller."""
    with simulator.lock:
        user = simulator.seller_user_id
        close = (simulator.now().date() + dt.timedelta(days=45)).isoformat()
        demo = [
            ("Contoso Ltd", "98052", "US", "Contoso Azure migration", 120000, True, "Ada", "Lovelace"),
            ("Fabrikam GmbH", "10115", "DE", "Fabrikam data platform", 80000, True, "Grace", "Hopper"),
            ("O'Brien & Co \\ Ltd", "D02 X285", "IE", "O'Brien security review", 25000, False, "Alan", "Turing"),
        ]
        for company, postal, country, deal, amount, syncing, first, last in demo:
            account = simulator._create(
                "Account", {"Name": company, "BillingPostalCode": postal, "BillingCountry": country}, user
            )
            contact = simulator._create(
                "Contact",
                {
                    "FirstName": first,
                    "LastName": last,
                    "Email": f"{first.lower()}@{company.split()[0].lower().strip(chr(39))}.example",
                    "AccountId": account,
                },
                user,
            )
            values: JsonDict = {
                "Name": deal,
                "AccountId": account,
                "StageName": "Qualification",
                "CloseDate": close,
                "Amount": amount,
            }
            if simulator.objects["Opportunity"].field("PCS_Sync_With_Partner_Center__c") is not None:
                values["PCS_Sync_With_Partner_Center__c"] = syncing
            opportunity = simulator._create("Opportunity", values, user)
            simulator._create(
                "OpportunityContactRole", {"OpportunityId": opportunity, "ContactId": contact, "IsPrimary": True}, user
            )


def write_as_seller(
    simulator: SalesforceSimulator, object_name: str, writes: Iterable[tuple[str | None, JsonDict, dt.datetime]]
) -> list[str]:
    """Test and benchmark control: a seller's mass update or data import in one go, each write at
    its own org time (`(record id or None to create, values, when)`); returns the record ids."""
    ids: list[str] = []
    with simulator.lock:
        frozen = simulator.frozen_now
        try:
            for record_id, values, when in writes:
                simulator.frozen_now = when
                if record_id is None:
                    ids.append(simulator._create(object_name, values, simulator.seller_user_id))
                else:
                    simulator._update(object_name, record_id, values, simulator.seller_user_id)
                    ids.append(record_id)
        finally:
            simulator.frozen_now = frozen
    return ids


def main() -> None:
    """`python -m sandbox.salesforce`: serve the simulator on the stable sandbox port with demo data."""
    import time

    from sandbox.server import serve

    server = serve(lambda url: SalesforceSimulator(url), port=credentials.SALESFORCE_PORT)
    seed_demo(server.simulator)  # type: ignore[arg-type]
    print(f"Salesforce simulator on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
