"""The Partner Center simulator: Referrals API, webhook registration API and signed webhook delivery.

Speaks the contract of shared/partner_center/contract.json (Microsoft's certified connector
definition and the Learn pages, as data) and reference/partner-center-api.md, at
`https://127.0.0.1:7101`:

    /v1.0/engagements/referrals[/{id}]       GET list/get, POST create, PATCH (JSON Patch), PUT
    /webhooks/v1/registration                GET / POST 200 (400 if one exists) / PUT 200 (replaces)
    /webhooks/v1/registration/events         GET the supported event names
    /webhooks/v1/registration/validationEvents[/{correlationId}]   POST send test / GET its results
    /cert/{name}                             the webhook signing certificate (leaf only, DER), as PC's
                                             blob URL, and the intermediate CA its AIA URL names

What the contract makes it enforce: a PATCH with any path the contract does not list is refused
whole (400 `invalidRequest`, status changes in it included); `dealValue` is taken as a number or
as text; a create must carry the required members and the customer's marketplace intent; every
answer carries every member the definition lists (null where unknown); list options `$filter`,
`$orderby`, `$top`, `$skip`, `$count`, `$select` are honoured, `$expand` and unknown options are
refused (400); `links.relatedReferrals.uri` holds the engagement id unquoted (the quoted filter
works too); user (App+User) tokens without an MFA claim (`amr` lacking "mfa") get 401 with error
900421 (nested `innerError` on the Referrals API, the classic body's code on the registration
host); validation-event results carry `responseCode` by name ("OK") and `systemError` as a boolean.

Bearer tokens come from the sandbox identity provider and are checked with `verify_access_token`:
audience `https://api.partner.microsoft.com` (delegated tokens only, as the real Referrals API) for
referrals, `https://api.partnercenter.microsoft.com` for registration.

Every referral write fires a webhook (`referral-created` / `referral-updated`) to the registered URL
when that event is registered, signed like Partner Center: `Authorization: Signature <base64
RSA-SHA256>` (or `x-ms-signature` when registered with `SignatureTokenToMsSignatureHeader`),
`x-ms-certificate-url` (this simulator's `/cert/...`: a leaf with O=Microsoft Corporation issued by
an intermediate CA "Microsoft Corporation" under the sandbox root) and `x-ms-signature-algorithm:
rsa-sha256`. A delivery is attempted up to 10 times with exponential back-off, then parked (as PC's
"offline queue").

Control API (besides reset/state/requests/faults of `sandbox.server`):
    POST /_sandbox/incoming-referral          Microsoft shares a new referral (body: referral fields)
    POST /_sandbox/referrals                  seed: a JSON array of referrals, stored as given (no webhooks)
    POST /_sandbox/referrals/{id}/as-microsoft  JSON Patch applied by Microsoft's side of the
        engagement: kept on Microsoft's related referral (same engagementId, created on first use);
        `/trackingInfo/...` also lands on the partner's referral. Fires `related-referral-created`
        or `-updated` carrying Microsoft's referral id (reference open question 4), and
        `referral-updated` when the partner's referral changed.
    POST /_sandbox/webhooks/drop              {"count": N}: the next N deliveries are lost (never sent)
    POST /_sandbox/webhooks/settings          {"backoff_seconds", "max_attempts", "timeout_seconds"}
    POST /_sandbox/referrals/{id}/expire      PC archives an unanswered (New) incoming referral after 14
        days (reference 1.2): `Closed/Expired`, new updatedDateTime and eTag, fires `referral-updated`
    POST /_sandbox/referrals/{id}/edit-after-next-read   JSON Patch applied as another Partner Center
        user right after the next `GET /referrals/{id}` was answered, so that reader's eTag is stale;
        normal transition checks, new eTag, fires `referral-updated`; outcomes in state `scheduled_edits`
    POST /_sandbox/referrals/answer-late      {"seconds", "count"}: the next creates store the referral (and
        fire its webhook) at once but answer only after `seconds`: a client that timed out missed a create
    GET /_sandbox/state also lists `patches`: every PATCH of a referral with its If-Match, operations and status
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import heapq
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from sandbox import credentials
from sandbox.identity import InvalidAccessToken, verify_access_token
from sandbox.odata import ODataError, compile_filter
from sandbox.server import JsonDict, Request, Response, Simulator, empty_response, json_response, route
from sandbox.tls import ensure_ca, ensure_intermediate_ca, issue_signing_certificate
from shared.http import tls_context
from shared.mapping.taxonomy import Kind, taxonomy
from shared.partner_center.contract import contract

REFERRALS_AUDIENCE = "https://api.partner.microsoft.com"
REGISTRATION_AUDIENCE = "https://api.partnercenter.microsoft.com"
REFERRALS_PATH = "/v1.0/engagements/referrals"
REGISTRATION_PATH = "/webhooks/v1/registration"
SIGNING_CERTIFICATE_NAME = "pcnotifications-dispatch.sandbox"
INTERMEDIATE_CERTIFICATE_NAME = "microsoft-sandbox-signing-ca"
PAGE_SIZE = contract().list_page_size
PARTNER_ORGANIZATION_ID = "5b1f8a2c-0d3e-4f7a-8b9c-6d5e4f3a2b1c"
PARTNER_ORGANIZATION_NAME = "Sandbox Partner Ltd"

REFERRAL_EVENTS = ("referral-created", "referral-updated", "related-referral-created", "related-referral-updated")
SUPPORTED_EVENTS = (*REFERRAL_EVENTS, "test-created", "subscription-updated", "invoice-ready")

_CONTRACT = contract()
_STATUS_CODES = {status.value for status in HTTPStatus}
# Status -> the substatus values allowed with it, and the statuses it may move to (the contract).
_SUBSTATUS = {status: set(_CONTRACT.substatuses(status)) for status in _CONTRACT.transition_statuses}
_NEXT_STATUS = {status: set(_CONTRACT.next_statuses(status)) for status in _CONTRACT.transition_statuses}
_READ_ONLY = {"id", "engagementId", "createdDateTime", "updatedDateTime", "eTag", "organizationId", "direction"}
_FILTER_FIELDS = set(_CONTRACT.filter_fields)
_DATE_FIELDS = set(_CONTRACT.orderby_fields)

# Every member the definition lists (null where unknown), so answers carry them all and JSON Patch
# `replace` finds its target; the defaults are what Partner Center shows for a new referral.
_REFERRAL_TEMPLATE: JsonDict = _CONTRACT.referral_document(
    {
        "status": "New",
        "substatus": "Pending",
        "type": "Independent",
        "qualification": "SalesQualified",
        "direction": "Outgoing",
        "referralProgram": "None",
        "registrationStatus": "None",
        "quality": "Unknown",
        "isSpam": False,
        "favorite": False,
        "consent": {
            "consentToContact": False,
            "consentToToShareInfoWithOthers": False,
            "consentToShareReferralWithMicrosoftSellers": False,
        },
    }
)


class ApiError(Exception):
    """A documented Partner Center error: `{"error": {"code", "message", "target"}}`."""

    def __init__(
        self, status: int, code: str, message: str, target: str | None = None, inner: JsonDict | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.target = target
        self.inner = inner

    def response(self) -> Response:
        error: JsonDict = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
        if self.inner:
            error["innerError"] = self.inner
        return json_response(self.status, {"error": error})


class RegistrationError(Exception):
    """An error of the classic Partner Center API host: `{code, description, data, source}`."""

    def __init__(self, status: int, code: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description

    def response(self) -> Response:
        return json_response(
            self.status, {"code": self.code, "description": self.description, "data": [], "source": "PartnerFD"}
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _timestamp(moment: dt.datetime | None = None) -> str:
    return (moment or _now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(value: str) -> dt.datetime:
    """ISO-8601 with up to 7 fractional digits (PC sends 7; Python parses 6)."""
    text = value.strip().replace("Z", "+00:00")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _new_etag() -> str:
    return f'"{uuid.uuid4()}"'


def _merge_defaults(template: Any, value: Any) -> Any:
    if isinstance(template, dict) and isinstance(value, dict):
        merged = {key: copy.deepcopy(default) for key, default in template.items()}
        for key, item in value.items():
            merged[key] = _merge_defaults(template.get(key), item) if key in template else item
        return merged
    return copy.deepcopy(value)


# ---- JSON Patch (RFC 6902, `add` and `replace`: the operations Partner Center accepts) ------------
def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ApiError(400, "invalidRequest", f"JSON Patch path {path!r} must start with '/'", "path")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def apply_json_patch(document: JsonDict, operations: Any) -> JsonDict:
    """Apply `add`/`replace` operations to a copy of `document`; raises ApiError on a bad patch."""
    if not isinstance(operations, list) or not operations:
        raise ApiError(400, "invalidRequest", "The request body must be a non-empty JSON Patch array.")
    patched = copy.deepcopy(document)
    for operation in operations:
        if not isinstance(operation, dict) or operation.get("op") not in ("add", "replace"):
            op = operation.get("op") if isinstance(operation, dict) else operation
            raise ApiError(400, "invalidRequest", f"Unsupported JSON Patch operation {op!r}: use add or replace.", "op")
        if "value" not in operation or not isinstance(operation.get("path"), str):
            raise ApiError(400, "invalidRequest", "Each JSON Patch operation needs 'path' and 'value'.", "path")
        parts = _pointer(operation["path"])
        if parts[0] in _READ_ONLY:
            raise ApiError(400, "invalidRequest", f"'{parts[0]}' is read-only.", parts[0])
        parent: Any = patched
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) and part.isdigit() else _member(parent, part)
            if parent is None:
                raise ApiError(400, "invalidRequest", f"Path {operation['path']} does not exist.", operation["path"])
        leaf = parts[-1]
        value = copy.deepcopy(operation["value"])
        if isinstance(parent, list):
            if operation["op"] == "add" and leaf == "-":
                parent.append(value)
            elif leaf.isdigit() and int(leaf) <= len(parent) - (operation["op"] == "replace"):
                if operation["op"] == "add":
                    parent.insert(int(leaf), value)
                else:
                    parent[int(leaf)] = value
            else:
                raise ApiError(400, "invalidRequest", f"Path {operation['path']} does not exist.", operation["path"])
        elif isinstance(parent, dict):
            if operation["op"] == "replace" and leaf not in parent:
                raise ApiError(400, "invalidRequest", f"Path {operation['path']} does not exist.", operation["path"])
            parent[leaf] = value
        else:
            raise ApiError(400, "invalidRequest", f"Path {operation['path']} does not exist.", operation["path"])
    return patched


def _count_option(request: Request, name: str) -> int | None:
    text = request.arg(name)
    if text is None:
        return None
    if not text.isdigit():
        raise ApiError(400, "invalidRequest", f"{name} must be a non-negative integer.", name)
    return int(text)


def _check_patch_paths(operations: Any) -> None:
    """Partner Center takes a PATCH only on the contract's paths; one other path refuses it all."""
    for operation in operations if isinstance(operations, list) else []:
        path = operation.get("path") if isinstance(operation, dict) else None
        if isinstance(path, str) and not _CONTRACT.is_patchable(path):
            status, code, message = _CONTRACT.refused_path_error(path)
            raise ApiError(status, code, message, path)


def _numbers_as_numbers(referral: JsonDict) -> JsonDict:
    """Learn's PATCH sample sends `dealValue` as a string ("10000"); the definition types it a
    number. Both are accepted and stored as a number."""
    details = referral.get("details")
    if not isinstance(details, dict):
        return referral
    value = details.get("dealValue")
    if isinstance(value, str):
        try:
            details["dealValue"] = float(value)
        except ValueError as error:
            raise ApiError(
                400, "invalidRequest", f"dealValue {value!r} is not a number.", "/details/dealValue"
            ) from error
    return referral


def _member(container: Any, key: str) -> Any:
    if isinstance(container, dict):
        return container.get(key)
    return None


# ---- $filter: the simulators' one OData parser (sandbox/odata.py) over the filterable fields ------
def _referral_filter(expression: str | None) -> Callable[[JsonDict], bool]:
    try:
        return compile_filter(expression, _FILTER_FIELDS)
    except ODataError as error:
        raise ApiError(400, "invalidRequest", error.message, "$filter") from error


# ---- webhook delivery -------------------------------------------------------------------------
@dataclass
class Delivery:
    id: str
    event: str
    resource_uri: str
    resource_name: str
    url: str
    body: bytes
    headers: dict[str, str]
    attempts: list[JsonDict] = field(default_factory=list)
    status: str = "pending"  # pending | delivered | parked | dropped
    correlation_id: str | None = None

    def as_dict(self) -> JsonDict:
        return {
            "id": self.id,
            "event": self.event,
            "resource_uri": self.resource_uri,
            "url": self.url,
            "status": self.status,
            "attempts": list(self.attempts),
            "correlation_id": self.correlation_id,
        }


class _Dispatcher:
    """One background thread sending due deliveries; retries are re-scheduled with back-off."""

    def __init__(self, on_attempt: Callable[[Delivery], bool]) -> None:
        self._on_attempt = on_attempt
        self._heap: list[tuple[float, int, Delivery]] = []
        self._sequence = 0
        self._generation = 0
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="partner-center-webhooks", daemon=True)
        self._thread.start()

    def schedule(self, delivery: Delivery, delay: float) -> None:
        with self._condition:
            self._sequence += 1
            heapq.heappush(self._heap, (time.monotonic() + delay, self._sequence, delivery))
            self._condition.notify()

    def clear(self) -> None:
        with self._condition:
            self._heap.clear()
            self._generation += 1

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = (self._heap[0][0] - time.monotonic()) if self._heap else None
                    self._condition.wait(timeout)
                _, _, delivery = heapq.heappop(self._heap)
            self._on_attempt(delivery)


class PartnerCenterSimulator(Simulator):
    """Partner Center's Referrals API, webhook registration API and webhook sender."""

    name = "partner-center"

    def __init__(
        self,
        base_url: str = "",
        *,
        page_size: int = PAGE_SIZE,
        backoff_seconds: float = 2.0,
        max_backoff_seconds: float = 300.0,
        max_attempts: int = 10,
        delivery_timeout_seconds: float = 10.0,
        validation_events_per_minute: int = 2,
    ) -> None:
        self.page_size = page_size
        self._delivery_defaults = (backoff_seconds, max_backoff_seconds, max_attempts, delivery_timeout_seconds)
        self.validation_events_per_minute = validation_events_per_minute
        # As Microsoft's: a leaf issued by an intermediate CA, the certificate URL serving the leaf
        # only and the leaf's AIA "CA Issuers" URL serving the intermediate.
        intermediate = ensure_intermediate_ca(INTERMEDIATE_CERTIFICATE_NAME, organization="Microsoft Corporation")
        self._intermediate_certificate = x509.load_pem_x509_certificate(intermediate.cert_path.read_bytes())
        self._signing_certificate, self._signing_key = issue_signing_certificate(
            SIGNING_CERTIFICATE_NAME,
            issuer=intermediate,
            organization="Microsoft Corporation",
            ca_issuers_url=f"{base_url.rstrip('/')}/cert/{INTERMEDIATE_CERTIFICATE_NAME}.cer" if base_url else None,
        )
        self._http = httpx.Client(verify=tls_context(str(ensure_ca().cert_path)), follow_redirects=False)
        self._dispatcher = _Dispatcher(self._attempt)
        super().__init__(base_url)

    # ---- records --------------------------------------------------------------------------------
    def reset_records(self) -> None:
        if hasattr(self, "_dispatcher"):
            self._dispatcher.clear()
        self.referrals: dict[str, JsonDict] = {}
        self.registration: JsonDict | None = None
        self.deliveries: list[Delivery] = []
        self.validation_events: dict[str, JsonDict] = {}
        self._validation_times: list[float] = []
        self.drop_next = 0
        self.scheduled_edits: dict[str, list[Any]] = {}  # referral id -> JSON Patch, applied after the next GET
        self.scheduled_edit_results: list[JsonDict] = []
        self.patches: list[JsonDict] = []  # every PATCH /referrals/{id}: referral_id, if_match, operations, status
        self.late_answers: list[float] = []  # seconds to hold the answer of each next create, after storing it
        backoff, max_backoff, attempts, timeout = self._delivery_defaults
        self.backoff_seconds = backoff
        self.max_backoff_seconds = max_backoff
        self.max_attempts = attempts
        self.delivery_timeout_seconds = timeout

    def state(self) -> JsonDict:
        return {
            "referrals": list(self.referrals.values()),
            "registration": self.registration,
            "deliveries": [delivery.as_dict() for delivery in self.deliveries],
            "validation_events": list(self.validation_events.values()),
            "patches": list(self.patches),
            "scheduled_edits": {
                "pending": copy.deepcopy(self.scheduled_edits),
                "done": list(self.scheduled_edit_results),
            },
        }

    @property
    def certificate_url(self) -> str:
        return f"{self.base_url}/cert/{SIGNING_CERTIFICATE_NAME}.cer"

    # ---- errors ---------------------------------------------------------------------------------
    def fault_response(self, status: int, request: Request) -> Response:
        if request.path.startswith(REGISTRATION_PATH):
            return RegistrationError(status, status, f"Injected status {status}").response()
        if status == 429:
            retry = 57
            return json_response(
                429, {"statusCode": 429, "message": f"Rate limit is exceeded. Try again in {retry} seconds."}
            )
        return ApiError(status, _CONTRACT.error_code(status), f"The service returned {status}.").response()

    def unknown_option_response(self, request: Request, name: str) -> Response:
        """A query option the route does not list (`sandbox.server` refuses it before the handler)."""
        return ApiError(400, "invalidRequest", f"The query option {name} is not supported.", name).response()

    def not_found_response(self, request: Request) -> Response:
        return ApiError(404, "itemNotFound", f"No resource at {request.path}.").response()

    def _authorize(self, request: Request, audience: str, *, delegated: bool) -> JsonDict:
        header = request.header("authorization") or ""
        if not header.lower().startswith("bearer "):
            raise ApiError(401, "unauthenticated", "Authorization header with a bearer token is required.")
        try:
            claims = verify_access_token(header[7:].strip(), audience=audience)
        except InvalidAccessToken as error:
            raise ApiError(401, "unauthenticated", f"The access token is invalid: {error.reason}.") from error
        if delegated and "scp" not in claims:
            raise ApiError(403, "accessDenied", "App-only tokens are not supported; use an App+User token.")
        if "scp" in claims and not _CONTRACT.has_mfa_claim(claims):
            # User-based calls need an MFA claim (2026). Where the code sits in the body is not
            # published: the Referrals API answer nests it (innerError), the registration host's
            # classic body carries it as its code, so clients are tested against both.
            message = "Multi-factor authentication is required for user-based Partner Center API calls."
            inner = {"code": _CONTRACT.mfa_error_code, "message": message}
            raise ApiError(401, "unauthenticated", message, inner=inner)
        return claims

    # ---- referrals: helpers -----------------------------------------------------------------------
    def _links(self, referral: JsonDict) -> JsonDict:
        base = f"{self.base_url}{REFERRALS_PATH}"
        return {
            "relatedReferrals": {
                # Unquoted, as real payloads carry it (the filter accepts the quoted form too).
                "uri": f"{base}?$filter={_CONTRACT.related_referrals_filter(referral['engagementId'])}",
                "method": "GET",
            },
            "self": {"uri": f"{base}/{referral['id']}", "method": "GET"},
        }

    def _store_new(self, fields: JsonDict, **server_fields: Any) -> JsonDict:
        now = _timestamp()
        referral: JsonDict = _merge_defaults(_REFERRAL_TEMPLATE, fields)
        referral.update(
            {
                "id": str(uuid.uuid4()),
                "engagementId": fields.get("engagementId") or str(uuid.uuid4()),
                "createdDateTime": now,
                "updatedDateTime": now,
                "eTag": _new_etag(),
                "@odata.context": f"{self.base_url}/v1.0/engagements/$metadata#referrals/$entity",
            }
        )
        referral.update(server_fields)
        referral["links"] = self._links(referral)
        self.referrals[referral["id"]] = referral
        return referral

    def _get(self, referral_id: str) -> JsonDict:
        referral = self.referrals.get(referral_id)
        if referral is None:
            raise ApiError(404, "itemNotFound", f"Referral {referral_id} was not found.", "id")
        return referral

    @staticmethod
    def _validate_new(fields: JsonDict) -> None:
        """What a create must carry (the contract): the required members and, since 2026-01-05,
        the customer's marketplace intent."""
        for path in _CONTRACT.create["required"]:
            node: Any = fields
            for part in path.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is None or node == "" or node == {}:
                raise ApiError(400, "invalidRequest", f"{path} is required.", path)
        if not _CONTRACT.has_marketplace_intent(fields):
            raise ApiError(
                400,
                "invalidRequest",
                "The customer's marketplace intent (details.requirements.additionalRequirements.attributes, "
                "type CustomerMarketplaceIntent) is required.",
                "details.requirements.additionalRequirements",
            )
        help_code = (fields.get("inviteContext") or {}).get("assistanceRequestCode")
        if help_code and help_code != "Unknown":
            _validate_services_cosell(fields)

    @staticmethod
    def _validate(referral: JsonDict) -> None:
        """Microsoft's documented rejections (reference section 4)."""
        if not referral.get("name"):
            raise ApiError(400, "invalidRequest", "name is required.", "name")
        country = ((referral.get("customerProfile") or {}).get("address") or {}).get("country")
        if not (isinstance(country, str) and re.fullmatch(r"[A-Z]{2}", country)):
            raise ApiError(
                400,
                "invalidRequest",
                "customerProfile.address.country must be a two-letter ISO 3166 code.",
                "customerProfile.address.country",
            )
        requirements = (referral.get("details") or {}).get("requirements") or {}
        solutions = requirements.get("solutions") or []
        solution_ids = _CONTRACT.create["solution_ids_required"]
        if any(not (isinstance(item, dict) and item.get("id")) for item in solutions):
            raise ApiError(400, "invalidRequest", solution_ids["message"], solution_ids["target"])
        help_code = (referral.get("inviteContext") or {}).get("assistanceRequestCode")
        if help_code and help_code != "Unknown":  # a co-sell: what asking Microsoft for help needs
            co_sell = _CONTRACT.create["co_sell_required"]
            if not solutions:
                raise ApiError(400, "invalidRequest", co_sell["solution"]["message"], co_sell["solution"]["target"])
            contacts = (referral.get("customerProfile") or {}).get("team") or []
            if not any(isinstance(contact, dict) and contact.get("email") for contact in contacts):
                raise ApiError(400, "invalidRequest", co_sell["contact"]["message"], co_sell["contact"]["target"])

    @staticmethod
    def _check_transition(before: JsonDict, after: JsonDict) -> None:
        old_status, new_status = before.get("status"), after.get("status")
        if old_status == "Closed":
            raise ApiError(
                400, "invalidRequest", "The referral is closed; closed referrals cannot be updated.", "status"
            )
        if new_status not in _SUBSTATUS:
            raise ApiError(400, "invalidRequest", f"'{new_status}' is not a valid status.", "status")
        if new_status not in _NEXT_STATUS.get(str(old_status), set(_SUBSTATUS)):
            raise ApiError(
                400, "invalidRequest", f"A referral cannot move from {old_status} to {new_status}.", "status"
            )
        if after.get("substatus") not in _SUBSTATUS[new_status]:
            allowed = ", ".join(sorted(_SUBSTATUS[new_status]))
            raise ApiError(
                400,
                "invalidRequest",
                f"Substatus '{after.get('substatus')}' is not valid with status {new_status} (allowed: {allowed}).",
                "substatus",
            )
        was_visible = (before.get("consent") or {}).get("consentToShareReferralWithMicrosoftSellers")
        if was_visible and not (after.get("consent") or {}).get("consentToShareReferralWithMicrosoftSellers"):
            raise ApiError(
                400,
                "invalidRequest",
                "Visibility to Microsoft sellers cannot be revoked once granted.",
                "consent.consentToShareReferralWithMicrosoftSellers",
            )

    def _commit_update(self, before: JsonDict, after: JsonDict) -> JsonDict:
        now = _timestamp()
        if after["status"] == "Active" and before.get("status") != "Active":
            after["acceptedDateTime"] = now
        if after["status"] == "Closed":
            after["closedDateTime"] = now
        after["updatedDateTime"] = now
        after["eTag"] = _new_etag()
        self.referrals[after["id"]] = after
        return after

    def _check_if_match(self, request: Request, referral: JsonDict, *, required: bool) -> None:
        if_match = request.header("if-match")
        if if_match is None:
            if required:
                raise ApiError(400, "invalidRequest", "The If-Match header is required.", "If-Match")
            return
        if if_match.strip() not in (referral["eTag"], "*"):
            raise ApiError(412, "preconditionFailed", "The resource has been modified since it was read.", "referral")

    # ---- referrals: routes ------------------------------------------------------------------------
    @route("GET", REFERRALS_PATH, query=_CONTRACT.list_options)
    def list_referrals(self, request: Request) -> Response:
        try:
            self._authorize(request, REFERRALS_AUDIENCE, delegated=True)
            matches = _referral_filter(request.arg("$filter"))
            order = (request.arg("$orderby") or "").split()
            top, skip = _count_option(request, "$top"), _count_option(request, "$skip")
            count = (request.arg("$count") or "true").lower()
            if count not in ("true", "false"):
                raise ApiError(400, "invalidRequest", "$count must be true or false.", "$count")
            expand = request.arg("$expand")
            if expand and any(item.strip() not in _CONTRACT.expandable for item in expand.split(",")):
                raise ApiError(400, "invalidRequest", f"A referral has no navigation property {expand!r}.", "$expand")
            select = [item.strip() for item in (request.arg("$select") or "").split(",") if item.strip()]
            missing = [item for item in select if item not in _REFERRAL_TEMPLATE]
            if missing:
                raise ApiError(400, "invalidRequest", f"A referral has no member {missing[0]!r}.", "$select")
            page_start = self._skip_of(request.arg("$skiptoken"))
            with self.lock:
                try:
                    matching = [copy.deepcopy(item) for item in self.referrals.values() if matches(item)]
                except ODataError as error:
                    raise ApiError(400, "invalidRequest", error.message, "$filter") from error
        except ApiError as error:
            return error.response()
        if order:
            if order[0] not in _DATE_FIELDS or (len(order) > 1 and order[1].lower() not in ("asc", "desc")):
                return ApiError(400, "invalidRequest", f"Ordering by {' '.join(order)} is not supported.").response()
            descending = len(order) > 1 and order[1].lower() == "desc"
            matching.sort(key=lambda item: parse_timestamp(item[order[0]]), reverse=descending)
        total = len(matching)  # OData: the count ignores $top and $skip
        matching = matching[skip or 0 :]
        if top is not None:
            matching = matching[:top]
        page = matching[page_start : page_start + self.page_size]
        if select:
            page = [{name: item.get(name) for name in select} for item in page]
        body: JsonDict = {"@odata.context": f"{self.base_url}/v1.0/engagements/$metadata#referrals", "value": page}
        if count == "true":
            body["@odata.count"] = total
        if page_start + self.page_size < len(matching):
            params = [(name, values[0]) for name, values in request.query.items() if name != "$skiptoken"]
            token = base64.urlsafe_b64encode(json.dumps({"skip": page_start + self.page_size}).encode()).decode()
            params.append(("$skiptoken", token))
            body["@odata.nextLink"] = f"{self.base_url}{REFERRALS_PATH}?{urlencode(params, safe='$/:,')}"
        return json_response(200, body)

    @staticmethod
    def _skip_of(token: str | None) -> int:
        if not token:
            return 0
        try:
            skip = json.loads(base64.urlsafe_b64decode(token.encode()))["skip"]
        except (ValueError, KeyError, TypeError) as error:
            raise ApiError(400, "invalidRequest", "The $skiptoken is not valid.", "$skiptoken") from error
        if not isinstance(skip, int) or skip < 0:
            raise ApiError(400, "invalidRequest", "The $skiptoken is not valid.", "$skiptoken")
        return skip

    @route("GET", REFERRALS_PATH + "/{referral_id}")
    def get_referral(self, request: Request) -> Response:
        try:
            self._authorize(request, REFERRALS_AUDIENCE, delegated=True)
            with self.lock:
                referral = copy.deepcopy(self._get(request.path_params["referral_id"]))
                self._apply_scheduled_edit(referral["id"])  # the answer above already holds the old eTag
        except ApiError as error:
            return error.response()
        return json_response(200, referral, {"ETag": referral["eTag"]})

    def _apply_scheduled_edit(self, referral_id: str) -> None:
        """Another Partner Center user's edit, landing between a reader's GET and its PATCH (caller holds the lock)."""
        operations = self.scheduled_edits.pop(referral_id, None)
        if operations is None:
            return
        try:
            before = self._get(referral_id)
            self._update(before, apply_json_patch(before, operations))
            outcome: JsonDict = {"referral_id": referral_id, "applied": True}
        except ApiError as error:  # kept in the state, so a test sees why the edit did not happen
            outcome = {"referral_id": referral_id, "applied": False, "error": error.message}
        self.scheduled_edit_results.append(outcome)

    @route("POST", REFERRALS_PATH)
    def create_referral(self, request: Request) -> Response:
        try:
            self._authorize(request, REFERRALS_AUDIENCE, delegated=True)
            fields = self._json_object(request)
            self._validate_new(fields)
            self._validate(_merge_defaults(_REFERRAL_TEMPLATE, fields))
            status = fields.get("status") or "Active"
            substatus = fields.get("substatus") or ("Accepted" if status == "Active" else "Pending")
            if status not in _SUBSTATUS or substatus not in _SUBSTATUS[status] or status == "Closed":
                raise ApiError(400, "invalidRequest", f"A new referral cannot be {status}/{substatus}.", "status")
            with self.lock:
                referral = self._store_new(
                    {key: value for key, value in fields.items() if key not in _READ_ONLY},
                    status=status,
                    substatus=substatus,
                    direction="Outgoing",
                    organizationId=PARTNER_ORGANIZATION_ID,
                    organizationName=PARTNER_ORGANIZATION_NAME,
                    acceptedDateTime=_timestamp() if status == "Active" else None,
                )
                self._fire("referral-created", referral["id"])
                created = copy.deepcopy(referral)
                late = self.late_answers.pop(0) if self.late_answers else 0.0
        except ApiError as error:
            return error.response()
        if late:
            time.sleep(late)  # the referral exists already; a client that gave up never hears of it
        # The connector swagger declares 200 for create (reference 1.1); clients accept any 2xx.
        return json_response(200, created, {"ETag": created["eTag"]})

    @staticmethod
    def _json_object(request: Request) -> JsonDict:
        try:
            body = request.json()
        except ValueError as error:
            raise ApiError(400, "invalidRequest", f"The request body is not valid JSON: {error}") from error
        if not isinstance(body, dict):
            raise ApiError(400, "invalidRequest", "The request body must be a JSON object.")
        return body

    @route("PATCH", REFERRALS_PATH + "/{referral_id}")
    def patch_referral(self, request: Request) -> Response:
        response = self._patch_referral(request)
        try:
            operations = request.json()
        except ValueError:
            operations = request.body.decode("utf-8", errors="replace")
        with self.lock:  # what tests check beyond the request log: the paths sent and the If-Match used
            self.patches.append(
                {
                    "referral_id": request.path_params["referral_id"],
                    "if_match": request.header("if-match"),
                    "operations": operations,
                    "status": response.status,
                }
            )
        return response

    def _patch_referral(self, request: Request) -> Response:
        try:
            self._authorize(request, REFERRALS_AUDIENCE, delegated=True)
            try:
                operations = request.json()
            except ValueError as error:
                raise ApiError(400, "invalidRequest", f"The request body is not valid JSON: {error}") from error
            _check_patch_paths(operations)
            with self.lock:
                before = self._get(request.path_params["referral_id"])
                self._check_if_match(request, before, required=False)
                after = _numbers_as_numbers(apply_json_patch(before, operations))
                updated = self._update(before, after)
        except ApiError as error:
            return error.response()
        return self._updated_response(request, updated)

    @route("PUT", REFERRALS_PATH + "/{referral_id}")
    def put_referral(self, request: Request) -> Response:
        try:
            self._authorize(request, REFERRALS_AUDIENCE, delegated=True)
            fields = self._json_object(request)
            with self.lock:
                before = self._get(request.path_params["referral_id"])
                self._check_if_match(request, before, required=True)
                after = _merge_defaults(_REFERRAL_TEMPLATE, fields)
                after.update({key: before.get(key) for key in (*_READ_ONLY, "@odata.context", "links")})
                updated = self._update(before, after)
        except ApiError as error:
            return error.response()
        return self._updated_response(request, updated)

    def _update(self, before: JsonDict, after: JsonDict) -> JsonDict:
        self._check_transition(before, after)
        self._validate(after)
        updated = self._commit_update(before, after)
        self._fire("referral-updated", updated["id"])
        return copy.deepcopy(updated)

    @staticmethod
    def _updated_response(request: Request, referral: JsonDict) -> Response:
        prefer = (request.header("prefer") or "").lower()
        if "return=representation" in prefer:
            return json_response(200, referral, {"ETag": referral["eTag"]})
        return empty_response(204, {"ETag": referral["eTag"]})

    # ---- webhook registration ---------------------------------------------------------------------
    def _authorize_registration(self, request: Request) -> None:
        try:
            self._authorize(request, REGISTRATION_AUDIENCE, delegated=False)
        except ApiError as error:
            code = int(error.inner["code"]) if error.inner else error.status
            raise RegistrationError(error.status, code, error.message) from error

    @staticmethod
    def _registration_body(request: Request) -> JsonDict:
        try:
            raw = request.json()
        except ValueError as error:
            raise RegistrationError(400, 400, f"The request body is not valid JSON: {error}") from error
        if not isinstance(raw, dict):
            raise RegistrationError(400, 400, "The request body must be a JSON object.")
        body = {key.lower(): value for key, value in raw.items()}  # PC reads property names case-insensitively
        url, events = body.get("webhookurl"), body.get("webhookevents")
        if not isinstance(url, str) or not re.match(r"^(https://|http://(127\.0\.0\.1|localhost)[:/])", url):
            raise RegistrationError(400, 400, "WebhookUrl must be an https URL.")
        if not isinstance(events, list) or not events or not all(isinstance(event, str) for event in events):
            raise RegistrationError(400, 400, "WebhookEvents must be a non-empty list of event names.")
        unknown = [event for event in events if event not in SUPPORTED_EVENTS]
        if unknown:
            raise RegistrationError(400, 400, f"Unsupported webhook events: {', '.join(unknown)}.")
        return {
            "SubscriberId": credentials.TENANT_ID,
            "WebhookUrl": url,
            "WebhookEvents": list(dict.fromkeys(events)),
            "SignatureTokenToMsSignatureHeader": bool(body.get("signaturetokentomssignatureheader", False)),
            "LastModifiedTimestamp": _timestamp(),
        }

    @route("GET", REGISTRATION_PATH + "/events")
    def registration_events(self, request: Request) -> Response:
        try:
            self._authorize_registration(request)
        except RegistrationError as error:
            return error.response()
        return json_response(200, list(SUPPORTED_EVENTS))

    @route("GET", REGISTRATION_PATH)
    def get_registration(self, request: Request) -> Response:
        try:
            self._authorize_registration(request)
            with self.lock:
                if self.registration is None:
                    raise RegistrationError(404, 404, "No webhook registration exists for this partner.")
                return json_response(200, dict(self.registration))
        except RegistrationError as error:
            return error.response()

    @route("POST", REGISTRATION_PATH)
    def create_registration(self, request: Request) -> Response:
        try:
            self._authorize_registration(request)
            registration = self._registration_body(request)
            with self.lock:
                if self.registration is not None:
                    # Undocumented: answered as a bad request (clients treat 400 and 409 alike).
                    raise RegistrationError(400, 400, "A registration already exists for this partner; use PUT.")
                self.registration = registration
        except RegistrationError as error:
            return error.response()
        return json_response(_CONTRACT.registration_create_status, dict(registration))

    @route("PUT", REGISTRATION_PATH)
    def update_registration(self, request: Request) -> Response:
        try:
            self._authorize_registration(request)
            registration = self._registration_body(request)
            with self.lock:
                if self.registration is None:
                    # Undocumented: answered as a bad request.
                    raise RegistrationError(400, 400, "No webhook registration exists for this partner; use POST.")
                self.registration = registration
        except RegistrationError as error:
            return error.response()
        return json_response(_CONTRACT.registration_update_status, dict(registration))

    @route("POST", REGISTRATION_PATH + "/validationEvents")
    def send_validation_event(self, request: Request) -> Response:
        try:
            self._authorize_registration(request)
            with self.lock:
                if self.registration is None or "test-created" not in self.registration["WebhookEvents"]:
                    raise RegistrationError(400, 400, "Register the 'test-created' event before sending a test.")
                now = time.monotonic()
                self._validation_times = [moment for moment in self._validation_times if now - moment < 60]
                if len(self._validation_times) >= self.validation_events_per_minute:
                    response = RegistrationError(429, 429, "Only 2 validation events per minute.").response()
                    response.headers["Retry-After"] = str(int(60 - (now - self._validation_times[0])) + 1)
                    return response
                self._validation_times.append(now)
                correlation_id = str(uuid.uuid4())
                self.validation_events[correlation_id] = {
                    "correlationId": correlation_id,
                    "partnerId": credentials.TENANT_ID,
                    "status": "pending",
                    "callbackUrl": self.registration["WebhookUrl"],
                    "results": [],
                }
                resource_uri = f"{self.base_url}{REGISTRATION_PATH}/validationEvents/{correlation_id}"
                self._send("test-created", resource_uri, "test", correlation_id=correlation_id)
        except RegistrationError as error:
            return error.response()
        return json_response(200, {"correlationId": correlation_id})

    @route("GET", REGISTRATION_PATH + "/validationEvents/{correlation_id}")
    def get_validation_event(self, request: Request) -> Response:
        try:
            self._authorize_registration(request)
            with self.lock:
                found = self.validation_events.get(request.path_params["correlation_id"])
                if found is None:
                    raise RegistrationError(404, 404, "No validation event with this correlation id.")
                return json_response(200, copy.deepcopy(found))
        except RegistrationError as error:
            return error.response()

    @route("GET", "/cert/{name}")
    def signing_certificate(self, request: Request) -> Response:
        served = {
            f"{SIGNING_CERTIFICATE_NAME}.cer": self._signing_certificate,  # the leaf only, as Microsoft's URL
            f"{INTERMEDIATE_CERTIFICATE_NAME}.cer": self._intermediate_certificate,  # the AIA "CA Issuers" URL
        }
        certificate = served.get(request.path_params["name"])
        if certificate is None:
            return Response(404, b"BlobNotFound", {"Content-Type": "text/plain"})
        der = certificate.public_bytes(serialization.Encoding.DER)
        return Response(200, der, {"Content-Type": "application/pkix-cert"})

    # ---- webhook delivery -------------------------------------------------------------------------
    def _fire(self, event: str, referral_id: str) -> None:
        """Queue a referral event (caller holds the lock) if the registration subscribes to it."""
        self._send(event, f"{self.base_url}/engagements/v1/referrals/{referral_id}", "referral")

    def sign(self, body: bytes) -> str:
        """Base64 RSA-SHA256 (PKCS#1 v1.5) signature of `body`, as Partner Center sends it."""
        signature = self._signing_key.sign(body, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode("ascii")

    def _send(self, event: str, resource_uri: str, resource_name: str, *, correlation_id: str | None = None) -> None:
        registration = self.registration
        if registration is None or event not in registration["WebhookEvents"]:
            return
        envelope = {
            "EventName": event,
            "ResourceUri": resource_uri,
            "ResourceName": resource_name,
            "AuditUri": None,
            "ResourceChangeUtcDate": _now().isoformat(),
        }
        body = json.dumps(envelope, separators=(",", ":")).encode("utf-8")
        signature = self.sign(body)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "x-ms-certificate-url": self.certificate_url,
            "x-ms-signature-algorithm": "rsa-sha256",
        }
        if registration.get("SignatureTokenToMsSignatureHeader"):
            headers["x-ms-signature"] = signature
        else:
            headers["Authorization"] = f"Signature {signature}"
        delivery = Delivery(
            id=str(uuid.uuid4()),
            event=event,
            resource_uri=resource_uri,
            resource_name=resource_name,
            url=registration["WebhookUrl"],
            body=body,
            headers=headers,
            correlation_id=correlation_id,
        )
        self.deliveries.append(delivery)
        if self.drop_next > 0:
            self.drop_next -= 1
            delivery.status = "dropped"
            return
        self._dispatcher.schedule(delivery, 0.0)

    def _attempt(self, delivery: Delivery) -> bool:
        started = _timestamp()
        try:
            response = self._http.post(
                delivery.url, content=delivery.body, headers=delivery.headers, timeout=self.delivery_timeout_seconds
            )
            code, message, system_error = response.status_code, response.text[:200], False
        except httpx.HTTPError as error:
            code, message, system_error = 0, f"{type(error).__name__}: {error}", True
        # As Microsoft's sample: the status by name ("OK"), and systemError a boolean.
        name = "".join(HTTPStatus(code).phrase.split()) if code in _STATUS_CODES else (str(code) if code else "")
        result = {"responseCode": name, "responseMessage": message, "systemError": system_error, "dateTimeUtc": started}
        with self.lock:
            if delivery not in self.deliveries:
                return False  # reset while in flight
            delivery.attempts.append({**result, "httpStatus": code})  # httpStatus: the sandbox's own record
            succeeded = 200 <= code < 300
            if succeeded:
                delivery.status = "delivered"
            elif len(delivery.attempts) >= self.max_attempts:
                delivery.status = "parked"  # PC's offline queue: no more attempts
            if delivery.correlation_id and delivery.correlation_id in self.validation_events:
                record = self.validation_events[delivery.correlation_id]
                record["results"].append(result)
                record["status"] = "completed" if succeeded else delivery.status
            if delivery.status == "pending":
                delay = min(self.backoff_seconds * 2 ** (len(delivery.attempts) - 1), self.max_backoff_seconds)
                self._dispatcher.schedule(delivery, delay)
        return succeeded

    # ---- control API ------------------------------------------------------------------------------
    @route("POST", "/_sandbox/incoming-referral")
    def _control_incoming(self, request: Request) -> Response:
        try:
            fields = self._json_object(request)
        except ApiError as error:
            return error.response()
        defaults: JsonDict = {
            "status": "New",
            "substatus": "Pending",
            "direction": "Incoming",
            "type": "Shared",
            "qualification": "SalesQualified",
            "organizationId": PARTNER_ORGANIZATION_ID,
            "organizationName": PARTNER_ORGANIZATION_NAME,
            "expirationDateTime": _timestamp(_now() + dt.timedelta(days=14)),
        }
        invite = {"invitedBy": {"organizationId": "msft", "organizationName": "Microsoft"}}
        fields = {**defaults, **fields, "inviteContext": {**invite, **(fields.get("inviteContext") or {})}}
        with self.lock:
            referral = self._store_new({key: value for key, value in fields.items() if key != "id"})
            self._fire("referral-created", referral["id"])
            created = copy.deepcopy(referral)
        return json_response(201, created)

    @route("POST", "/_sandbox/referrals")
    def _control_seed(self, request: Request) -> Response:
        """Seed referrals (a JSON array of referral fields) without firing webhooks."""
        body = request.json()
        if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
            return json_response(400, {"error": {"code": "BadSeed", "message": "body must be a JSON array of objects"}})
        with self.lock:
            stored = [copy.deepcopy(self._store_new(dict(item))) for item in body]
        return json_response(201, {"value": stored})

    @route("POST", "/_sandbox/referrals/{referral_id}/as-microsoft")
    def _control_as_microsoft(self, request: Request) -> Response:
        try:
            operations = request.json()
            with self.lock:
                partner = self._get(request.path_params["referral_id"])
                microsoft = next(
                    (
                        item
                        for item in self.referrals.values()
                        if item["engagementId"] == partner["engagementId"] and item.get("organizationId") == "msft"
                    ),
                    None,
                )
                created = microsoft is None
                if microsoft is None:
                    microsoft = self._store_new(
                        {
                            "name": partner.get("name"),
                            "engagementId": partner["engagementId"],
                            "customerProfile": copy.deepcopy(partner.get("customerProfile")),
                            "details": copy.deepcopy(partner.get("details")),
                            "type": "Shared",
                            "target": [{"type": "BusinessProfileLocation", "id": "msft"}],
                        },
                        organizationId="msft",
                        organizationName="Microsoft",
                        status="New",
                        substatus="Received",
                        direction="Incoming",
                    )
                # Microsoft's side is not bound by the partner's transition rules.
                updated_microsoft = apply_json_patch(microsoft, operations)
                self._commit_update(microsoft, updated_microsoft)
                tracking = [op for op in operations if str(op.get("path", "")).startswith("/trackingInfo")]
                if tracking:
                    self._commit_update(partner, apply_json_patch(partner, tracking))
                event = "related-referral-created" if created else "related-referral-updated"
                self._fire(event, updated_microsoft["id"])
                if tracking:
                    self._fire("referral-updated", partner["id"])
                result = {
                    "partner": copy.deepcopy(self.referrals[partner["id"]]),
                    "microsoft": copy.deepcopy(updated_microsoft),
                }
        except ApiError as error:
            return error.response()
        except (ValueError, AttributeError) as error:
            return ApiError(400, "invalidRequest", f"Bad JSON Patch: {error}").response()
        return json_response(200, result)

    @route("POST", "/_sandbox/referrals/{referral_id}/expire")
    def _control_expire(self, request: Request) -> Response:
        """Partner Center archives an incoming referral nobody answered within 14 days (reference 1.2)."""
        try:
            with self.lock:
                before = self._get(request.path_params["referral_id"])
                if before.get("status") != "New":
                    raise ApiError(
                        400, "invalidRequest", f"Only a New referral expires; this one is {before.get('status')}."
                    )
                after = {**copy.deepcopy(before), "status": "Closed", "substatus": "Expired"}
                expired = copy.deepcopy(self._commit_update(before, after))
                self._fire("referral-updated", expired["id"])
        except ApiError as error:
            return error.response()
        return json_response(200, expired)

    @route("POST", "/_sandbox/referrals/{referral_id}/edit-after-next-read")
    def _control_edit_after_next_read(self, request: Request) -> Response:
        try:
            operations = request.json()
        except ValueError as error:
            return ApiError(400, "invalidRequest", f"The request body is not valid JSON: {error}").response()
        if not isinstance(operations, list) or not operations:
            return ApiError(400, "invalidRequest", "The request body must be a non-empty JSON Patch array.").response()
        with self.lock:
            try:
                self._get(request.path_params["referral_id"])
            except ApiError as error:
                return error.response()
            self.scheduled_edits[request.path_params["referral_id"]] = operations
        return json_response(202, {"scheduled": operations})

    @route("POST", "/_sandbox/referrals/answer-late")
    def _control_answer_late(self, request: Request) -> Response:
        body = request.json() or {}
        seconds = body.get("seconds") if isinstance(body, dict) else None
        count = body.get("count", 1) if isinstance(body, dict) else None
        if not (isinstance(seconds, int | float) and 0 < seconds <= 120 and isinstance(count, int) and count > 0):
            message = "body must be {'seconds': 0 < s <= 120, 'count': n > 0}"
            return json_response(400, {"error": {"code": "BadLateAnswer", "message": message}})
        with self.lock:
            self.late_answers.extend([float(seconds)] * count)
        return json_response(200, {"late_answers": list(self.late_answers)})

    @route("POST", "/_sandbox/webhooks/drop")
    def _control_drop(self, request: Request) -> Response:
        body = request.json() or {}
        count = body.get("count", 1) if isinstance(body, dict) else None
        if not isinstance(count, int) or count < 0:
            return json_response(400, {"error": {"code": "BadDrop", "message": "count must be a non-negative integer"}})
        with self.lock:
            self.drop_next = count
        return json_response(200, {"drop_next": count})

    @route("POST", "/_sandbox/webhooks/settings")
    def _control_delivery_settings(self, request: Request) -> Response:
        body = request.json()
        allowed = {"backoff_seconds", "max_backoff_seconds", "max_attempts", "timeout_seconds"}
        if not isinstance(body, dict) or not set(body) <= allowed:
            message = f"body must be an object with some of {sorted(allowed)}"
            return json_response(400, {"error": {"code": "BadSettings", "message": message}})
        if not all(isinstance(value, int | float) and value > 0 for value in body.values()):
            return json_response(400, {"error": {"code": "BadSettings", "message": "values must be positive numbers"}})
        with self.lock:
            self.backoff_seconds = float(body.get("backoff_seconds", self.backoff_seconds))
            self.max_backoff_seconds = float(body.get("max_backoff_seconds", self.max_backoff_seconds))
            self.max_attempts = int(body.get("max_attempts", self.max_attempts))
            self.delivery_timeout_seconds = float(body.get("timeout_seconds", self.delivery_timeout_seconds))
        return empty_response(204)


def partner_center_factory(**options: Any) -> Callable[[str], PartnerCenterSimulator]:
    """`serve(partner_center_factory(), port=credentials.PARTNER_CENTER_PORT)`."""

    def build(base_url: str) -> PartnerCenterSimulator:
        return PartnerCenterSimulator(base_url, **options)

    return build


_TAXONOMY_KINDS: dict[str, Kind] = {
    "partnerRole": "partner_role",
    "solutionArea": "solution_area",
    "solutionPlay": "solution_play",
}


def _validate_services_cosell(fields: JsonDict) -> None:
    """A co-sell referral must carry a current Partner Role, Solution Area and Solution Play, as
    top-level members or as typed `additionalRequirements.attributes` items (contract.json's note)."""
    terms = _CONTRACT.create
    error = terms["services_cosell_error"]
    attributes = (((fields.get("details") or {}).get("requirements") or {}).get("additionalRequirements") or {}).get(
        "attributes"
    ) or []
    year = taxonomy().fiscal_year
    for member in terms["services_cosell_required"]:
        attribute_type = terms["services_cosell_attribute_types"][member]
        value = fields.get(member) or next(
            (item.get("id") for item in attributes if isinstance(item, dict) and item.get("type") == attribute_type),
            None,
        )
        if not value:
            raise ApiError(400, "invalidRequest", error["message"].format(member=member, fiscal_year=year), member)
        active, _ = taxonomy().picklist(_TAXONOMY_KINDS[member])
        if value not in active:
            message = error["retired_message"].format(value=value, member=member, fiscal_year=year)
            raise ApiError(400, "invalidRequest", message, member)
