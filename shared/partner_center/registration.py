"""Partner Center webhook registration (reference/partner-center-api.md 2.1): idempotent, loud on overwrite.

`WebhookRegistrar.ensure(url)` does GET -> compare (URL + events) -> nothing, POST (none yet) or
PUT (one exists). Partner Center keeps ONE registration per tenant, so a PUT to another URL takes
the events away from whatever tool registered before (Microsoft's connector, CIPP, ...): the result
names the overwritten URL and we log a warning. `send_test` posts a validation event
(`test-created`) and polls its delivery results for a bounded time.

Calls go through the Referrals client's `ApiTransport` (retries, `Retry-After`, typed errors that
read both error body shapes) with a token for `PC_WEBHOOK_API_SCOPE`. Webhook URLs carry the
function key in `?code=`, so every URL we show or log has its key-like query values masked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError, field_validator

from shared.http import tls_context
from shared.partner_center.auth import SignInRequired
from shared.partner_center.client import (
    ApiTransport,
    PartnerCenterError,
    PartnerCenterNotFoundError,
    TokenProvider,
)
from shared.partner_center.contract import contract
from shared.partner_center.token_store import TokenStoreError
from shared.settings import Settings

logger = logging.getLogger(__name__)

WEBHOOK_EVENTS = (
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
    "test-created",
)
"""What we register: the four referral events plus `test-created` (needed to send validation events)."""

WEBHOOK_ROLE_ADVICE = (
    "Microsoft's webhook page lists the roles Billing admin, Admin agent, Sales agent and Helpdesk agent for "
    "this API (the co-sell connector docs use the Referrals Admin): give the signed-in user one of them "
    "besides Referrals Admin, or sign in with a user who has both"
)
"""Sources differ on who may register webhooks; the sign-in is the Referrals Admin's, so a 403 says this."""

REGISTRATION_FAILURES = (SignInRequired, TokenStoreError, PartnerCenterError)
"""What a registration call may raise besides a bad URL: each has a message fit for an admin."""

_SECRET_QUERY_NAMES = frozenset({"code", "key", "sig", "token", "access_token"})
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Validation event `status` values are not documented (reference 2.1 shows the field only); these
# mean "still trying". Any other status with no 2xx attempt is final.
_IN_PROGRESS_STATUSES = frozenset({"", "pending", "queued", "notstarted", "inprogress", "in-progress", "retrying"})


def validate_webhook_url(url: str) -> str:
    """The URL to register, or ValueError naming `url`: https (plain http only on this machine)."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"url must be an absolute https URL, got {redact_url(url)!r}")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
        raise ValueError("url must use https (Partner Center delivers only to https endpoints)")
    if parts.fragment:
        raise ValueError("url must not carry a #fragment")
    return url


def redact_url(url: str) -> str:
    """`url` with the values of key-like query parameters (`code`, `sig`, ...) replaced by `***`."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [
        (name, "***" if name.lower() in _SECRET_QUERY_NAMES else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*/:")))


@dataclass(frozen=True)
class WebhookRegistration:
    url: str
    events: tuple[str, ...]
    signature_in_ms_header: bool = False
    subscriber_id: str | None = None
    last_modified: str | None = None

    @classmethod
    def from_wire(cls, body: Any) -> WebhookRegistration | None:
        """Parse a registration; None when the body holds none (no URL).

        Property names are case-insensitive in practice (docs PascalCase, REST reference camelCase).
        """
        if not isinstance(body, dict):
            return None
        fields = {str(key).lower(): value for key, value in body.items()}
        url = fields.get("webhookurl")
        if not isinstance(url, str) or not url:
            return None
        events = fields.get("webhookevents") or []
        return cls(
            url=url,
            events=tuple(str(event) for event in events) if isinstance(events, list) else (),
            signature_in_ms_header=bool(fields.get("signaturetokentomssignatureheader", False)),
            subscriber_id=fields.get("subscriberid"),
            last_modified=fields.get("lastmodifiedtimestamp"),
        )

    def matches(self, url: str, events: tuple[str, ...]) -> bool:
        return self.url == url and {e.lower() for e in self.events} == {e.lower() for e in events}

    def missing_events(self, events: tuple[str, ...] = WEBHOOK_EVENTS) -> list[str]:
        registered = {event.lower() for event in self.events}
        return [event for event in events if event not in registered]

    def as_json(self) -> dict[str, Any]:
        return {"url": redact_url(self.url), "events": list(self.events)}


@dataclass(frozen=True)
class DeliveryAttempt:
    """One delivery attempt of a validation event. Microsoft's sample shows `"responseCode": "OK"`
    and `"systemError": false`; older text shows a number and a message: both are read."""

    response_code: int | str
    response_message: str | None
    system_error: bool
    at: str | None

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> DeliveryAttempt:
        code = body.get("responseCode")
        message = body.get("responseMessage")
        system_error = body.get("systemError")
        if isinstance(system_error, str) and system_error:  # the older shape: the error text itself
            message, system_error = system_error, True
        return cls(
            response_code=code if isinstance(code, int | str) and not isinstance(code, bool) else 0,
            response_message=str(message) if message else None,
            system_error=bool(system_error),
            at=body.get("dateTimeUtc"),
        )

    @property
    def succeeded(self) -> bool:
        return not self.system_error and contract().validation_result_ok(self.response_code)

    def describe(self) -> str:
        if self.system_error:
            reason = self.response_message or "a system error on Partner Center's side"
            return f"no response ({reason})"
        code = f"HTTP {self.response_code}" if isinstance(self.response_code, int) else str(self.response_code)
        return f"{code} {self.response_message or ''}".rstrip()


@dataclass(frozen=True)
class ValidationOutcome:
    """What became of one validation (`test-created`) event."""

    delivered: bool
    status: str  # Partner Center's status, or "timed out" / "not sent"
    correlation_id: str | None = None
    attempts: tuple[DeliveryAttempt, ...] = ()
    error: str | None = None

    def describe(self) -> str:
        if self.error:
            return f"the test event was not sent: {self.error}"
        last = f"; last attempt: {self.attempts[-1].describe()}" if self.attempts else "; no delivery attempt yet"
        verdict = "delivered" if self.delivered else "NOT delivered"
        return (
            f"test event {self.correlation_id} {verdict} (status {self.status}, {len(self.attempts)} attempt(s){last})"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "status": self.status,
            "correlation_id": self.correlation_id,
            "attempts": [
                {
                    "response_code": a.response_code,
                    "response_message": a.response_message,
                    "system_error": a.system_error,
                    "at": a.at,
                }
                for a in self.attempts
            ],
            "error": self.error,
        }


@dataclass(frozen=True)
class RegistrationResult:
    action: Literal["unchanged", "created", "updated"]
    before: WebhookRegistration | None
    after: WebhookRegistration
    overwritten_url: str | None = None  # another URL that lost the tenant's only registration
    test: ValidationOutcome | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.test is None or self.test.delivered

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "action": self.action,
            "before": self.before.as_json() if self.before else None,
            "after": self.after.as_json(),
            "overwritten_url": redact_url(self.overwritten_url) if self.overwritten_url else None,
            "test": self.test.as_json() if self.test else None,
        }


class WebhookRegistrar:
    """The webhook registration API (`{PC_WEBHOOK_API_BASE_URL}/registration`)."""

    def __init__(
        self,
        transport: ApiTransport,
        *,
        test_transport: ApiTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        http: httpx.Client | None = None,
    ) -> None:
        self._api = transport
        # One attempt for the test event: PC allows 2 a minute, and waiting out a 60 s Retry-After
        # inside an admin command helps nobody; the caller sees the throttling message instead.
        self._test_api = test_transport or transport
        self._sleep = sleep
        self._http = http

    @classmethod
    def from_settings(
        cls, settings: Settings, token_provider: TokenProvider, **transport_options: Any
    ) -> WebhookRegistrar:
        """`transport_options` go to `ApiTransport` (e.g. `sleep`, `max_attempts`)."""
        http = httpx.Client(
            timeout=settings.pc_http_timeout_seconds,
            verify=tls_context(settings.tls_ca_bundle),
            follow_redirects=False,
        )
        common: dict[str, Any] = {
            "base_url": settings.pc_webhook_api_base_url,
            "scope": settings.pc_webhook_api_scope,
            "token_provider": token_provider,
            "http": http,
            "forbidden_advice": WEBHOOK_ROLE_ADVICE,
            **transport_options,
        }
        return cls(
            ApiTransport(**common),
            test_transport=ApiTransport(**{**common, "max_attempts": 1}),
            sleep=transport_options.get("sleep", time.sleep),
            http=http,
        )

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        else:
            self._api.close()

    def current(self) -> WebhookRegistration | None:
        """The tenant's registration, or None. Uncertain in the reference: "none" may come as 404
        or as a 2xx with an empty body or no URL, so all of those mean None."""
        try:
            response = self._api.request("GET", "/registration", what="read the webhook registration")
        except PartnerCenterNotFoundError:
            return None
        return WebhookRegistration.from_wire(_json_or_none(response))

    def ensure(
        self, url: str, *, send_test: bool = False, test_timeout_seconds: float = 60.0, poll_seconds: float = 2.0
    ) -> RegistrationResult:
        """Register `url` for `WEBHOOK_EVENTS` unless exactly that is registered already."""
        url = validate_webhook_url(url)
        before = self.current()
        action: Literal["unchanged", "created", "updated"]
        if before is not None and before.matches(url, WEBHOOK_EVENTS):
            action, after = "unchanged", before
        else:
            body = {
                "WebhookUrl": url,
                "WebhookEvents": list(WEBHOOK_EVENTS),
                "SignatureTokenToMsSignatureHeader": False,
            }
            if before is None:
                try:
                    response = self._api.request(
                        "POST", "/registration", what="create the webhook registration", json_body=body
                    )
                    action = "created"
                except PartnerCenterError as error:
                    # PC refuses a POST when a registration exists ("use PUT"; status undocumented):
                    # someone registered since our GET. Re-read it so the overwrite is reported.
                    before = self.current() if error.status in (400, 409) else None
                    if before is None:
                        raise
                    logger.info("a webhook registration appeared since we read it; replacing it with PUT")
            if before is not None:
                response = self._api.request(
                    "PUT", "/registration", what="replace the webhook registration", json_body=body
                )
                action = "updated"
            after = WebhookRegistration.from_wire(_json_or_none(response)) or WebhookRegistration(url, WEBHOOK_EVENTS)
        overwritten = before.url if before is not None and before.url != url else None
        if overwritten:
            logger.warning(
                "Partner Center webhook registration OVERWRITTEN: %s no longer receives events (one URL per tenant)",
                redact_url(overwritten),
            )
        logger.info("Partner Center webhook registration %s: %s", action, redact_url(after.url))
        test = self.send_test(timeout_seconds=test_timeout_seconds, poll_seconds=poll_seconds) if send_test else None
        return RegistrationResult(action, before, after, overwritten, test)

    def send_test(self, *, timeout_seconds: float = 60.0, poll_seconds: float = 2.0) -> ValidationOutcome:
        """POST a validation event, then poll its delivery results until a 2xx, a final status or the deadline."""
        try:
            response = self._test_api.request(
                "POST", "/registration/validationEvents", what="send a validation event", idempotent=False
            )
        except PartnerCenterError as error:
            logger.error("Partner Center validation event not sent: %s", error)
            return ValidationOutcome(delivered=False, status="not sent", error=str(error))
        body = _json_or_none(response)
        correlation_id = str(body.get("correlationId") or "") if isinstance(body, dict) else ""
        if not correlation_id:
            return ValidationOutcome(
                delivered=False, status="not sent", error="Partner Center returned no correlationId"
            )
        deadline = time.monotonic() + timeout_seconds
        status = "pending"
        attempts: tuple[DeliveryAttempt, ...] = ()
        while True:
            status, attempts = self._validation_results(correlation_id, status, attempts)
            delivered = any(attempt.succeeded for attempt in attempts)
            final = bool(attempts) and status.replace(" ", "").lower() not in _IN_PROGRESS_STATUSES
            if delivered or final:
                return ValidationOutcome(delivered, status, correlation_id, attempts)
            if time.monotonic() >= deadline:
                return ValidationOutcome(False, "timed out", correlation_id, attempts)
            self._sleep(min(poll_seconds, max(deadline - time.monotonic(), 0.0)))

    def _validation_results(
        self, correlation_id: str, status: str, attempts: tuple[DeliveryAttempt, ...]
    ) -> tuple[str, tuple[DeliveryAttempt, ...]]:
        try:
            response = self._api.request(
                "GET", f"/registration/validationEvents/{correlation_id}", what="read the validation event results"
            )
        except PartnerCenterNotFoundError:
            return status, attempts  # not recorded yet: keep polling until the deadline
        body = _json_or_none(response)
        if not isinstance(body, dict):
            return status, attempts
        results = body.get("results") or []
        return (
            str(body.get("status") or ""),
            tuple(DeliveryAttempt.from_wire(item) for item in results if isinstance(item, dict)),
        )


def _json_or_none(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


@contextmanager
def default_registrar() -> Iterator[WebhookRegistrar]:
    """A registrar on the process-wide settings and Partner Center sign-in (the function app's)."""
    from shared import bootstrap

    auth = bootstrap.partner_center_auth()
    registrar = WebhookRegistrar.from_settings(
        bootstrap.settings(), auth.token, on_mfa_required=auth.record_mfa_refusal
    )
    try:
        yield registrar
    finally:
        registrar.close()


# ---- the admin HTTP endpoint -------------------------------------------------------------------
class RegistrationRequest(BaseModel):
    """Body of `POST /api/manage/partner-center/webhook-registration`."""

    model_config = ConfigDict(extra="forbid")

    url: str
    send_test: StrictBool = False

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        return validate_webhook_url(value)


def _error(status: int, code: str, message: str, target: str | None = None) -> tuple[int, dict[str, Any]]:
    error: dict[str, Any] = {"code": code, "message": message}
    if target:
        error["target"] = target
    return status, {"error": error}


def handle_registration_request(
    body: bytes, registrar: Callable[[], Any] = default_registrar, *, test_timeout_seconds: float = 60.0
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) for the admin endpoint. `registrar` is a context manager factory."""
    try:
        request = RegistrationRequest.model_validate_json(body or b"")
    except ValidationError as error:
        first = error.errors()[0]
        target = ".".join(str(part) for part in first["loc"]) or None
        message = str(first["msg"]).removeprefix("Value error, ")
        logger.warning("webhook registration request refused: %s: %s", target or "body", message)
        return _error(400, "invalidRequest", f"{target}: {message}" if target else message, target)
    try:
        with registrar() as registering:
            result = registering.ensure(
                request.url, send_test=request.send_test, test_timeout_seconds=test_timeout_seconds
            )
    except (SignInRequired, TokenStoreError) as error:
        logger.error("webhook registration: %s", error)
        return _error(503, "signInRequired", str(error))
    except PartnerCenterError as error:
        logger.error("webhook registration: %s", error)
        return _error(502, error.code or "partnerCenterError", str(error))
    return 200, result.as_json()
