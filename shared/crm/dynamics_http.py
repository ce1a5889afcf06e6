"""The Dataverse Web API over HTTP: MSAL client-credentials sign-in, retries, typed errors, `$batch`.

Every call names an *operation* (e.g. "read", "upsert"), and `call_counts` counts the HTTP requests
made per operation, retries included, for the benchmarks. Service protection (crm-apis.md B4): a
429 or 503 is retried after `Retry-After` seconds within the short retry budget of shared/retry.py,
then raised as `CrmTransientError` carrying the server's wait (the queue retries later). An expired or revoked token (401) is dropped and fetched once more.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from shared.crm.port import CrmAuthError, CrmError, CrmNotFoundError, CrmTransientError, CrmValidationError
from shared.http import tls_context
from shared.retry import DEFAULT_BACKOFF, DEFAULT_BUDGET_SECONDS, RetryBudget, RetryLater
from shared.settings import Settings

API_PATH = "/api/data/v9.2/"
DEFAULT_TIMEOUT_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 60.0
_MICROSOFT_AUTHORITY_HOSTS = (".microsoftonline.com", ".microsoftonline.us", ".chinacloudapi.cn", ".microsoft.com")

JsonDict = dict[str, Any]


class DataverseConflictError(CrmTransientError):
    """412: the record changed since we read it (stale etag). Re-read and try again."""


class DataverseDuplicateError(CrmValidationError):
    """412 / duplicate key: a record with these alternate-key values already exists."""


def odata_string(value: str) -> str:
    """An OData string literal: single-quoted, quotes doubled (the only escape OData has)."""
    return "'" + value.replace("'", "''") + "'"


# ---- MSAL (one app per process and identity; it caches tokens in memory) ---------------------------
_apps: dict[tuple[str, str, str | None], Any] = {}
_apps_lock = threading.Lock()


def _is_microsoft_host(authority_host: str) -> bool:
    host = (urlsplit(authority_host).hostname or "").lower()
    return host.endswith(_MICROSOFT_AUTHORITY_HOSTS)


def msal_app(settings: Settings) -> Any:
    """The process-wide `ConfidentialClientApplication` for the Dataverse application user."""
    if not (settings.dataverse_tenant_id and settings.dataverse_client_id and settings.dataverse_client_secret):
        raise CrmAuthError(
            "DATAVERSE_TENANT_ID, DATAVERSE_CLIENT_ID and DATAVERSE_CLIENT_SECRET must be set to sign in to Dataverse"
        )
    authority = f"{settings.dataverse_authority_host}/{settings.dataverse_tenant_id}"
    key = (authority, settings.dataverse_client_id, settings.tls_ca_bundle)
    with _apps_lock:
        app = _apps.get(key)
        if app is None:
            import msal  # heavy: imported on first sign-in, never at module import

            app = msal.ConfidentialClientApplication(
                settings.dataverse_client_id,
                client_credential=settings.dataverse_client_secret.get_secret_value(),
                authority=authority,
                # MSAL asks Microsoft's instance discovery about unknown hosts; the sandbox is one.
                instance_discovery=_is_microsoft_host(settings.dataverse_authority_host),
                http_client=httpx.Client(verify=tls_context(settings.tls_ca_bundle), timeout=DEFAULT_TIMEOUT_SECONDS),
            )
            _apps[key] = app
        return app


@dataclass
class BatchPart:
    """One request of a `$batch`: method, URL relative to the API root, JSON body, extra headers."""

    method: str
    url: str
    body: JsonDict | None = None
    headers: Mapping[str, str] | None = None


@dataclass
class BatchResult:
    status: int
    headers: dict[str, str]
    body: JsonDict | None

    @property
    def entity_id(self) -> str | None:
        return entity_id_of(self.headers.get("odata-entityid"))


def entity_id_of(url: str | None) -> str | None:
    """The GUID in an `OData-EntityId` header (`.../accounts(<guid>)`)."""
    found = re.search(r"\(([0-9a-fA-F-]{36})\)$", url or "")
    return found.group(1).lower() if found else None


class DataverseHttp:
    """Authenticated Web API calls with retries and typed errors; counts requests per operation."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_retries: int = len(DEFAULT_BACKOFF),
        budget_seconds: float = DEFAULT_BUDGET_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not settings.dataverse_url:
            raise CrmAuthError("DATAVERSE_URL must be set to use the Dynamics 365 adapter")
        self.settings = settings
        self.org_url = settings.dataverse_url.rstrip("/")
        self.api_root = self.org_url + API_PATH
        self.scope = f"{self.org_url}/.default"
        self.backoff = tuple(DEFAULT_BACKOFF[min(index, len(DEFAULT_BACKOFF) - 1)] for index in range(max_retries))
        """Waits between retries when Dataverse names none (it usually sends Retry-After)."""
        self.budget_seconds = budget_seconds
        self._sleep = sleep
        self.call_counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._http = httpx.Client(
            verify=tls_context(settings.tls_ca_bundle),
            timeout=httpx.Timeout(timeout_seconds),
            headers={"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"},
        )

    def close(self) -> None:
        self._http.close()

    # ---- auth ----------------------------------------------------------------------------------------
    def _token(self) -> str:
        result = msal_app(self.settings).acquire_token_for_client(scopes=[self.scope])
        if "access_token" not in result:
            error = result.get("error", "unknown_error")
            description = result.get("error_description", "")
            if error in ("temporarily_unavailable",) or str(result.get("status", "")).startswith("5"):
                raise CrmTransientError(f"Dataverse sign-in is temporarily unavailable: {description}")
            raise CrmAuthError(f"Dataverse sign-in failed ({error}): {description}")
        return str(result["access_token"])

    def _drop_token(self) -> None:
        msal_app(self.settings).remove_tokens_for_client()

    # ---- requests --------------------------------------------------------------------------------------
    def request(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        expected: tuple[int, ...] = (200, 201, 204),
    ) -> httpx.Response:
        """Send one Web API request (URL relative to the API root, or absolute for nextLinks), within
        the retry budget (shared/retry.py): throttling (429, 503) is retried after Retry-After while
        the budget lasts, then raised as `CrmTransientError` carrying the server's wait."""
        target = url if url.startswith("https://") or url.startswith("http://") else self.api_root + url

        def attempt() -> httpx.Response:
            response = self._send(operation, method, target, params, json_body, content, headers)
            if response.status_code == 401:  # an expired or revoked token: fetch a new one, once
                self._drop_token()
                response = self._send(operation, method, target, params, json_body, content, headers)
            if response.status_code in expected:
                return response
            failure = error_from_response(operation, response)
            if response.status_code in (429, 503):
                raise RetryLater(failure, _retry_after(response))
            raise failure

        return RetryBudget(backoff=self.backoff, seconds=self.budget_seconds).call(attempt, sleep=self._sleep)

    def _send(
        self,
        operation: str,
        method: str,
        target: str,
        params: Mapping[str, str] | None,
        json_body: Any,
        content: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> httpx.Response:
        request_headers = {"Authorization": f"Bearer {self._token()}", **(headers or {})}
        with self._counts_lock:
            self.call_counts[operation] += 1
        try:
            return self._http.request(
                method, target, params=params, json=json_body, content=content, headers=request_headers
            )
        except httpx.TimeoutException as error:
            raise CrmTransientError(f"Dataverse {operation}: {method} timed out ({error})") from error
        except httpx.TransportError as error:
            raise CrmTransientError(f"Dataverse {operation}: {method} failed to connect ({error})") from error

    def get_json(self, operation: str, url: str, *, params: Mapping[str, str] | None = None, **kwargs: Any) -> JsonDict:
        payload = self.request(operation, "GET", url, params=params, expected=(200,), **kwargs).json()
        if not isinstance(payload, dict):
            raise CrmTransientError(f"Dataverse {operation}: expected a JSON object, got {type(payload).__name__}")
        return payload

    def get_all(
        self,
        operation: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        page_size: int = 500,
        prefer: str = "",
    ) -> tuple[list[JsonDict], JsonDict]:
        """Every row of a collection, following `@odata.nextLink` verbatim with the same page size.

        Returns the rows and the last page (which holds `@odata.deltaLink` for change tracking).
        """
        preference = f"odata.maxpagesize={page_size}" + (f",{prefer}" if prefer else "")
        headers = {"Prefer": preference}
        page = self.get_json(operation, url, params=params, headers=headers)
        rows: list[JsonDict] = list(page.get("value", []))
        while next_link := page.get("@odata.nextLink"):
            page = self.get_json(operation, str(next_link), headers=headers)
            rows.extend(page.get("value", []))
        return rows, page

    def batch(self, operation: str, parts: list[BatchPart], *, atomic: bool) -> list[BatchResult]:
        """Send parts in one `$batch`: as one change set when `atomic`, else independent, continuing on error.

        Returns one result per part, in order; the caller checks each status.
        """
        if not parts:
            return []
        batch_boundary = f"batch_{uuid.uuid4()}"
        lines = self._batch_lines(parts, batch_boundary, atomic=atomic)
        headers = {"Content-Type": f"multipart/mixed; boundary={batch_boundary}"}
        if not atomic:
            headers["Prefer"] = "odata.continue-on-error"
        response = self.request(
            operation,
            "POST",
            "$batch",
            content="\r\n".join(lines).encode("utf-8"),
            headers=headers,
            expected=(200, 400, 404, 412),
        )
        results = parse_batch_response(response.headers.get("content-type", ""), response.content)
        if atomic and any(result.status >= 400 for result in results):
            failed = next(result for result in results if result.status >= 400)
            raise error_from_parts(operation, failed.status, failed.body or {}, None)
        if len(results) != len(parts) and response.status_code == 200:
            raise CrmTransientError(f"Dataverse {operation}: the batch answered {len(results)} parts for {len(parts)}")
        return results

    def _batch_lines(self, parts: list[BatchPart], batch_boundary: str, *, atomic: bool) -> list[str]:
        """The multipart body: one change set holding every part when `atomic`, else the parts side by side."""
        change_boundary = f"changeset_{uuid.uuid4()}"

        def request_part(part: BatchPart, content_id: int) -> list[str]:
            block = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
            if atomic:
                block.append(f"Content-ID: {content_id}")
            block += ["", f"{part.method} {self.api_root}{part.url} HTTP/1.1"]
            block += [f"{name}: {value}" for name, value in (part.headers or {}).items()]
            if part.body is not None:
                block += ["Content-Type: application/json; type=entry", "", json.dumps(part.body)]
            else:
                block += [""]
            return block

        lines: list[str] = []
        if atomic:
            lines += [f"--{batch_boundary}", f"Content-Type: multipart/mixed; boundary={change_boundary}", ""]
            for index, part in enumerate(parts, start=1):
                lines += [f"--{change_boundary}", *request_part(part, index)]
            lines += [f"--{change_boundary}--"]
        else:
            for index, part in enumerate(parts, start=1):
                lines += [f"--{batch_boundary}", *request_part(part, index)]
        return [*lines, f"--{batch_boundary}--", ""]


def _retry_after(response: httpx.Response) -> float | None:
    """The server's wait in seconds; None when it names none (or an HTTP date): our back-off then."""
    header = response.headers.get("Retry-After")
    try:
        seconds = float(header) if header is not None else None
    except ValueError:
        return None
    return None if seconds is None else max(0.0, min(seconds, MAX_RETRY_AFTER_SECONDS))


def _error_body(response: httpx.Response) -> JsonDict:
    try:
        payload = response.json()
    except ValueError:
        return {}
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, dict) else {}


def error_from_response(operation: str, response: httpx.Response) -> CrmError:
    retry_after = response.headers.get("Retry-After")
    return error_from_parts(
        operation, response.status_code, {"error": _error_body(response)}, float(retry_after) if retry_after else None
    )


def error_from_parts(operation: str, status: int, body: JsonDict, retry_after: float | None) -> CrmError:
    """`{error: {code, message}}` + status -> the port's typed error (the code is often empty)."""
    nested = body.get("error")
    error: JsonDict = nested if isinstance(nested, dict) else body
    code = str(error.get("code") or "")
    message = str(error.get("message") or f"HTTP {status}")
    text = f"Dataverse {operation}: {message}" + (f" (code {code})" if code else "")
    if status == 404:
        return CrmNotFoundError(text)
    if status == 412:
        if code == "0x80040237" or "already exists" in message:
            return DataverseDuplicateError(text, code=code, fields=_fields_in(message))
        return DataverseConflictError(text)
    if status in (401, 403):
        return CrmAuthError(text)
    if status in (429, 503) or status >= 500:
        return CrmTransientError(text, retry_after_seconds=retry_after)
    return CrmValidationError(text, code=code or None, fields=_fields_in(message))


def _fields_in(message: str) -> list[str]:
    """Column names quoted in a Dataverse message ("The property 'x' ...", "the 'name' attribute")."""
    return list(dict.fromkeys(re.findall(r"'([a-z_][a-z0-9_]*)'", message)))


# ---- $batch responses ------------------------------------------------------------------------------------
def _boundary(content_type: str) -> str:
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not found:
        raise CrmTransientError(f"Dataverse $batch: response without a multipart boundary ({content_type!r})")
    return found.group(1)


def _split(body: bytes, boundary: str) -> list[bytes]:
    parts = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        parts.append(chunk.strip(b"\r\n"))
    return parts


def _head_and_rest(block: bytes) -> tuple[dict[str, str], bytes]:
    head, _, rest = block.replace(b"\r\n", b"\n").partition(b"\n\n")
    headers = {}
    for line in head.decode("utf-8").split("\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return headers, rest


def parse_batch_response(content_type: str, body: bytes) -> list[BatchResult]:
    results: list[BatchResult] = []
    for part in _split(body, _boundary(content_type)):
        headers, rest = _head_and_rest(part)
        if headers.get("content-type", "").startswith("multipart/mixed"):
            results.extend(parse_batch_response(headers["content-type"], rest))
            continue
        status_line, _, response = rest.partition(b"\n")
        status = int(status_line.split(b" ")[1])
        response_headers, response_body = _head_and_rest(response) if response.strip() else ({}, b"")
        parsed: JsonDict | None = None
        if response_body.strip():
            try:
                loaded = json.loads(response_body)
                parsed = loaded if isinstance(loaded, dict) else None
            except ValueError:
                parsed = None
        results.append(BatchResult(status, response_headers, parsed))
    return results
