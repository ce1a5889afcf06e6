"""Who may open the status page, and CSRF protection for its actions.

The page's routes are anonymous at the Functions level, because in Azure the gate is App Service
authentication (Entra ID sign-in, infra/app/statusauth.bicep), which a function key cannot
express (azure-functions-host#11394). So the check happens here, in one of two modes:

- Sandbox (`SANDBOX_FUNCTION_KEY` set): the function key, as `?code=` or `x-functions-key`.
  Principal headers are ignored: nothing on a laptop strips a forged one.
- Azure (no sandbox key): the user App Service authentication signed in, passed as the
  `X-MS-CLIENT-PRINCIPAL` header (which the platform strips from incoming requests and sets
  itself, and only when `WEBSITE_AUTH_ENABLED` says it is on), holding the admin app role.

CSRF: a double-submit token. The page sets a random token in a `SameSite=Strict`, `HttpOnly`
cookie and repeats it in every form; a POST must carry both, equal, and must not come from
another site (`Sec-Fetch-Site`, when the browser sends it).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

from shared.settings import Settings

CSRF_COOKIE = "cosell_status_csrf"
CSRF_FIELD = "csrf"
_ROLE_CLAIMS = ("roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role")


class AccessDenied(Exception):
    """401 (who are you?) or 403 (not allowed / forged request), with the reason in plain words."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Viewer:
    name: str
    via: str


def _header(headers: Mapping[str, str], name: str) -> str:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), "")


def authorize(settings: Settings, headers: Mapping[str, str], params: Mapping[str, str]) -> Viewer:
    """The viewer, or `AccessDenied`."""
    if settings.sandbox_function_key is not None:
        given = params.get("code") or _header(headers, "x-functions-key")
        if not given:
            raise AccessDenied(401, "this page needs the function key (?code=...)")
        if not hmac.compare_digest(given.encode(), settings.sandbox_function_key.get_secret_value().encode()):
            raise AccessDenied(401, "the function key is not valid")
        return Viewer("sandbox admin", "function key")
    if not settings.website_auth_enabled:
        raise AccessDenied(
            401, "App Service authentication is not enabled: deploy it with STATUS_PAGE_CLIENT_ID (docs/operations.md)"
        )
    principal = _principal(_header(headers, "x-ms-client-principal"))
    if principal is None:
        raise AccessDenied(401, "sign in with your work account to see this page")
    role_types = {*_ROLE_CLAIMS, str(principal.get("role_typ") or "")}
    listed = principal.get("claims")
    claims = [claim for claim in listed if isinstance(claim, dict)] if isinstance(listed, list) else []
    roles = {str(claim.get("val")) for claim in claims if claim.get("typ") in role_types}
    name = _header(headers, "x-ms-client-principal-name") or "signed-in user"
    if settings.status_page_admin_role not in roles:
        raise AccessDenied(403, f"{name} does not have the app role {settings.status_page_admin_role}")
    return Viewer(name, "Entra ID")


def _principal(encoded: str) -> dict[str, object] | None:
    if not encoded:
        return None
    try:
        decoded = json.loads(base64.b64decode(encoded, validate=False))
    except (binascii.Error, ValueError):
        return None
    return decoded if isinstance(decoded, dict) else None


def csrf_token(headers: Mapping[str, str]) -> tuple[str, bool]:
    """(the token to put in forms, whether the cookie must be (re)set)."""
    current = _cookie(headers, CSRF_COOKIE)
    if current and len(current) >= 32:
        return current, False
    return secrets.token_urlsafe(32), True


def csrf_cookie(token: str, *, secure: bool, path: str) -> str:
    return f"{CSRF_COOKIE}={token}; Path={path}; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")


def check_csrf(headers: Mapping[str, str], form: Mapping[str, str]) -> None:
    """Refuse a POST that another site made, or that lacks the page's own token."""
    site = _header(headers, "sec-fetch-site").lower()
    if site and site not in ("same-origin", "none"):
        raise AccessDenied(403, "the request came from another site")
    cookie = _cookie(headers, CSRF_COOKIE)
    submitted = form.get(CSRF_FIELD, "")
    if not cookie or not submitted or not hmac.compare_digest(cookie.encode(), submitted.encode()):
        raise AccessDenied(403, "the form's security token is missing or stale: reload the page and try again")


def _cookie(headers: Mapping[str, str], name: str) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(_header(headers, "cookie"))
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel else None
