"""Partner Center Referrals API client (httpx), reference/partner-center-api.md section 1.

- Every call has a timeout (PC_HTTP_TIMEOUT_SECONDS), a fresh `client-request-id` and an
  `MS-CorrelationId` shared by the calls of one operation (all pages of one listing).
- 429 and 5xx and transport errors are retried with capped exponential back-off and jitter;
  `Retry-After` wins when present. A create (POST) is retried only when the request surely did
  not take effect (429, 503, connection refused), so a retry never creates a duplicate.
- Errors are typed and keep Partner Center's `code` (`{"error": {"code", "message", "target",
  "innerError"}}`) and every nested `innerError` code: code against codes, never `message`. A 401
  for a sign-in without MFA (Partner Center error 900421) is `PartnerCenterMfaRequiredError`.
- The bearer token comes from an injected provider (`scope -> token`), normally
  `shared.partner_center.auth.PartnerCenterAuth.token`.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import re
import ssl
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from shared.http import tls_context
from shared.model.referral import PatchOperation, Referral, ReferralPage, format_pc_datetime
from shared.partner_center.contract import contract
from shared.settings import Settings

logger = logging.getLogger(__name__)

TokenProvider = Callable[[str], str]
"""Returns a bearer token for a scope (e.g. `https://api.partner.microsoft.com/.default`)."""

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_NOT_APPLIED_STATUSES = frozenset({429, 503})  # the server did not act on the request
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class PartnerCenterError(Exception):
    """A Partner Center call failed. `status` is the HTTP status (0: no response), `code` PC's error code."""

    transient = False

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str | None = None,
        target: str | None = None,
        inner_codes: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.target = target
        self.inner_codes = inner_codes

    @property
    def codes(self) -> tuple[str, ...]:
        """The top-level code, then each nested `innerError` code, outermost first."""
        return ((self.code,) if self.code else ()) + self.inner_codes


class PartnerCenterValidationError(PartnerCenterError):
    """400/422: the request was refused as invalid (permanent; `target` names the field)."""


class PartnerCenterAuthError(PartnerCenterError):
    """401/403: the token was refused or lacks the Referrals Admin role."""


class PartnerCenterMfaRequiredError(PartnerCenterAuthError):
    """401 with error 900421: the stored sign-in was made without multi-factor authentication."""

    advice = (
        "Partner Center refuses this sign-in because it carries no MFA claim (error 900421): sign in again with "
        "`python -m shared partner-center login` as the Referrals Admin and complete multi-factor authentication"
    )


class PartnerCenterNotFoundError(PartnerCenterError):
    """404: no such referral (or registration)."""


class PartnerCenterConflictError(PartnerCenterError):
    """409/412: the referral changed since it was read (`If-Match`); re-read and re-apply."""

    transient = True


class PartnerCenterThrottledError(PartnerCenterError):
    """429 after every retry."""

    transient = True


class PartnerCenterUnavailableError(PartnerCenterError):
    """5xx or no response after every retry."""

    transient = True


def odata_string(value: str) -> str:
    """An OData string literal: quotes doubled, so `O'Brien` cannot end the literal early."""
    return "'" + value.replace("'", "''") + "'"


def odata_datetime(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("a timezone-aware datetime is required for an OData date filter")
    return format_pc_datetime(moment)


@dataclass(frozen=True)
class ErrorDetails:
    code: str | None
    message: str
    target: str | None = None
    inner_codes: tuple[str, ...] = ()


def _inner_codes(error: dict[str, Any]) -> tuple[str, ...]:
    """Codes of the nested `innerError` chain (the Partner API error body allows any depth)."""
    codes: list[str] = []
    inner = error.get("innerError") or error.get("innererror")
    for _ in range(10):  # far deeper than any real body
        if not isinstance(inner, dict):
            break
        if inner.get("code") is not None:
            codes.append(str(inner["code"]))
        inner = inner.get("innerError") or inner.get("innererror")
    return tuple(codes)


def _error_details(response: httpx.Response) -> ErrorDetails:
    """Code, message, target and nested codes from any of Partner Center's error body shapes."""
    try:
        body = response.json()
    except ValueError:
        return ErrorDetails(None, response.text[:500] or response.reason_phrase)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):  # Referrals API: {"error": {"code", "message", "target", "innerError"}}
            code = str(error["code"]) if error.get("code") is not None else None
            return ErrorDetails(code, str(error.get("message") or ""), error.get("target"), _inner_codes(error))
        if "description" in body:  # classic API host: {code, description, data, source}
            return ErrorDetails(str(body.get("code")), str(body.get("description")))
        if "message" in body:  # throttling: {"statusCode": 429, "message": ...}
            return ErrorDetails(str(body.get("statusCode") or response.status_code), str(body["message"]))
    return ErrorDetails(None, response.text[:500])


def _mfa_required(details: ErrorDetails) -> bool:
    """Error 900421 in any code, or in the message (reports do not say where it sits)."""
    wanted = contract().mfa_error_code
    return wanted in ((details.code,) if details.code else ()) + details.inner_codes or wanted in details.message


def raise_for_response(response: httpx.Response, what: str) -> None:
    if response.is_success:
        return
    details = _error_details(response)
    status = response.status_code
    code, message = details.code, details.message
    text = f"{what} failed with {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    error_type: type[PartnerCenterError]
    if status in (400, 422):
        error_type = PartnerCenterValidationError
    elif status == 401 and _mfa_required(details):
        error_type = PartnerCenterMfaRequiredError
        text = f"{text.rstrip('.')}. {PartnerCenterMfaRequiredError.advice}"
    elif status in (401, 403):
        error_type = PartnerCenterAuthError
    elif status == 404:
        error_type = PartnerCenterNotFoundError
    elif status in (409, 412):
        error_type = PartnerCenterConflictError
    elif status == 429:
        error_type = PartnerCenterThrottledError
    elif status >= 500:
        error_type = PartnerCenterUnavailableError
    else:
        error_type = PartnerCenterError
    raise error_type(text, status=status, code=code, target=details.target, inner_codes=details.inner_codes)


class ApiTransport:
    """Authenticated, retrying JSON calls to one Partner Center API (shared by both PC hosts)."""

    def __init__(
        self,
        *,
        base_url: str,
        scope: str,
        token_provider: TokenProvider,
        timeout_seconds: float = 30.0,
        verify: ssl.SSLContext | bool = True,
        max_attempts: int = 5,
        max_backoff_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        http: httpx.Client | None = None,
        on_mfa_required: Callable[[PartnerCenterMfaRequiredError], None] | None = None,
        forbidden_advice: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._on_mfa_required = on_mfa_required  # e.g. PartnerCenterAuth.record_mfa_refusal, for the health page
        self._forbidden_advice = forbidden_advice  # added to a 403's message: which role this API asks for
        self.scope = scope
        self._token = token_provider
        self._max_attempts = max_attempts
        self._max_backoff = max_backoff_seconds
        self._sleep = sleep
        self._random = random.Random()
        self._http = http or httpx.Client(timeout=timeout_seconds, verify=verify, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self._max_backoff)
            except ValueError:
                pass  # an HTTP-date Retry-After: fall back to our own back-off
        backoff: float = min(self._max_backoff, 0.5 * 2**attempt)
        return backoff / 2 + self._random.uniform(0, backoff / 2)  # "equal jitter"

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        correlation_id: str | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """Send with retries; returns a 2xx response or raises a typed `PartnerCenterError`."""
        full_url = url if url.startswith(("https://", "http://")) else f"{self.base_url}{url}"
        correlation_id = correlation_id or str(uuid.uuid4())
        response: httpx.Response | None = None
        for attempt in range(self._max_attempts):
            call_headers = {
                "Authorization": f"Bearer {self._token(self.scope)}",
                "Accept": "application/json",
                "client-request-id": str(uuid.uuid4()),
                "MS-CorrelationId": correlation_id,
                **(headers or {}),
            }
            last = attempt == self._max_attempts - 1
            try:
                response = self._http.request(method, full_url, json=json_body, params=params, headers=call_headers)
            except httpx.TransportError as error:
                sent = not isinstance(error, httpx.ConnectError)
                if last or (sent and not idempotent):
                    raise PartnerCenterUnavailableError(f"{what} failed: {type(error).__name__}: {error}") from error
                delay = self._delay(attempt, None)
                logger.warning("%s: %s; retry %d in %.1fs", what, type(error).__name__, attempt + 1, delay)
                self._sleep(delay)
                continue
            retryable = response.status_code in (_RETRY_STATUSES if idempotent else _NOT_APPLIED_STATUSES)
            if response.is_success or not retryable or last:
                break
            delay = self._delay(attempt, response)
            logger.warning("%s: HTTP %d; retry %d in %.1fs", what, response.status_code, attempt + 1, delay)
            self._sleep(delay)
        assert response is not None  # the loop ran at least once and either returned or raised
        try:
            raise_for_response(response, what)
        except PartnerCenterMfaRequiredError as refused:
            if self._on_mfa_required is not None:
                self._on_mfa_required(refused)
            raise
        except PartnerCenterAuthError as refused:
            if refused.status != 403 or not self._forbidden_advice:
                raise
            raise PartnerCenterAuthError(
                f"{str(refused).rstrip('.')}. {self._forbidden_advice}",
                status=refused.status,
                code=refused.code,
                target=refused.target,
                inner_codes=refused.inner_codes,
            ) from refused
        return response


class PartnerCenterClient:
    """The Referrals API: list (paged), get, create, JSON Patch update, related referrals."""

    def __init__(self, transport: ApiTransport) -> None:
        self._api = transport

    @classmethod
    def from_settings(cls, settings: Settings, token_provider: TokenProvider, **options: Any) -> PartnerCenterClient:
        return cls(
            ApiTransport(
                base_url=settings.pc_api_base_url,
                scope=settings.pc_api_scope,
                token_provider=token_provider,
                timeout_seconds=settings.pc_http_timeout_seconds,
                verify=tls_context(settings.tls_ca_bundle),
                **options,
            )
        )

    def close(self) -> None:
        self._api.close()

    def list_pages(
        self, *, filter: str | None = None, orderby: str | None = None, top: int | None = None
    ) -> Iterator[ReferralPage]:
        """Pages of `GET /referrals`, following `@odata.nextLink` verbatim (it is opaque)."""
        params: dict[str, str] = {}
        if filter:
            params["$filter"] = filter
        if orderby:
            params["$orderby"] = orderby
        if top is not None:
            params["$top"] = str(top)
        return self._pages("/referrals", params)

    def _pages(self, url: str, params: dict[str, str]) -> Iterator[ReferralPage]:
        correlation_id = str(uuid.uuid4())
        next_url: str | None = url
        while next_url:
            response = self._api.request(
                "GET", next_url, what="list referrals", params=params or None, correlation_id=correlation_id
            )
            page = ReferralPage.model_validate(response.json())
            yield page
            next_url, params = page.odata_next_link, {}

    def list_referrals(
        self, *, filter: str | None = None, orderby: str | None = None, top: int | None = None
    ) -> Iterator[Referral]:
        for page in self.list_pages(filter=filter, orderby=orderby, top=top):
            yield from page.value

    def referrals_updated_since(self, moment: dt.datetime) -> Iterator[Referral]:
        """Referrals changed at or after `moment`, oldest change first (the reconcile poll)."""
        return self.list_referrals(filter=f"updatedDateTime ge {odata_datetime(moment)}", orderby="updatedDateTime asc")

    def related_referrals(self, referral: Referral) -> list[Referral]:
        """Every referral of `referral`'s engagement (ours, Microsoft's, other partners').

        Follows the referral's own `links.relatedReferrals.uri` as given (real payloads carry the
        engagement id unquoted; older docs quoted it); without a link, builds the same unquoted filter."""
        link = referral.links.related_referrals if referral.links else None
        if link is not None and link.uri:
            if urlsplit(link.uri).netloc == urlsplit(self._api.base_url).netloc:
                return [item for page in self._pages(link.uri, {}) for item in page.value]
            # Our bearer token goes only to the API host we were configured with.
            logger.warning("related-referrals link of %s points to another host; using the filter", referral.id)
        if not referral.engagement_id:
            raise ValueError(f"referral {referral.id} has neither a related-referrals link nor an engagement id")
        if not _GUID.fullmatch(referral.engagement_id):
            raise ValueError(f"engagement id {referral.engagement_id!r} is not a GUID")
        return list(self.list_referrals(filter=contract().related_referrals_filter(referral.engagement_id)))

    def get_referral(self, referral_id: str) -> Referral:
        response = self._api.request("GET", f"/referrals/{_segment(referral_id)}", what=f"get referral {referral_id}")
        return Referral.model_validate(response.json())

    def create_referral(self, referral: Referral | dict[str, Any]) -> Referral:
        body = referral.to_wire() if isinstance(referral, Referral) else referral
        response = self._api.request("POST", "/referrals", what="create referral", json_body=body, idempotent=False)
        return Referral.model_validate(response.json())

    def update_referral(
        self,
        referral_id: str,
        operations: Sequence[PatchOperation | dict[str, Any]],
        *,
        etag: str | None = None,
        return_representation: bool = True,
    ) -> Referral | None:
        """JSON Patch (`add`/`replace` only). With `etag`, a concurrent change raises
        `PartnerCenterConflictError` (412). Returns the updated referral unless asked not to (204)."""
        if not operations:
            raise ValueError("a referral update needs at least one JSON Patch operation")
        body = [
            (item if isinstance(item, PatchOperation) else PatchOperation.model_validate(item)).model_dump(mode="json")
            for item in operations
        ]
        headers = {"Content-Type": "application/json"}
        if etag is not None:
            headers["If-Match"] = etag  # verbatim, quotes included
        if return_representation:
            headers["Prefer"] = "return=representation"
        # Replaces are safe to resend; an append (`/-`) without If-Match is not.
        appends = any(str(item["path"]).endswith("/-") for item in body)
        response = self._api.request(
            "PATCH",
            f"/referrals/{_segment(referral_id)}",
            what=f"update referral {referral_id}",
            json_body=body,
            headers=headers,
            idempotent=etag is not None or not appends,
        )
        if response.status_code == 204 or not response.content:
            return None
        return Referral.model_validate(response.json())


def _segment(identifier: str) -> str:
    if not identifier or any(ch in identifier for ch in "/?#\\ ") or identifier in (".", ".."):
        raise ValueError(f"referral id {identifier!r} is not a valid URL path segment")
    return identifier
