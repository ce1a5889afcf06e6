"""Delegated (App+User) sign-in to Partner Center with MSAL, persisted in storage.

- `login()`: device code flow as the Referrals Admin (once); the MSAL cache is saved encrypted.
- `token(scope)`: an access token for the Referrals API or the webhook registration API, silently
  from the stored cache (the refresh token is multi-resource); the cache is written back, with ETag
  concurrency, whenever MSAL changed it.
- `refresh()`: the timer's job: force a refresh-token redemption so it never idles out (90 days),
  and record success or the error for the health page. Never raises for a refresh failure.
- `health_summary()`: signed-in account, last refresh-token use, last refresh error, and whether
  the stored sign-in carries an MFA claim (Partner Center refuses user calls without one: 401,
  error 900421); `record_mfa_refusal()` keeps such a refusal for the health page.

The confidential client authenticates with its secret on every grant, the device code included
(real Entra's rules for secrets on the device code grant are not in our reference; a refresh
token obtained by a public client flow may refuse a secret later, so we use one client type).
msal's own `verify=` is bypassed by REQUESTS_CA_BUNDLE in requests, so MSAL gets an httpx client
with our TLS context instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from shared.http import tls_context
from shared.partner_center.contract import contract
from shared.partner_center.token_store import StoredSignIn, TokenCacheStore, TokenStoreConflict, utc_now_text
from shared.settings import Settings
from shared.sync.storage import StorageAccount

logger = logging.getLogger(__name__)

_MICROSOFT_AUTHORITY_HOSTS = (
    "login.microsoftonline.com",
    "login.microsoft.com",
    "login.windows.net",
    "sts.windows.net",
)
_DEVICE_CODE_EXTRA_SCOPES = ["offline_access", "openid", "profile"]


class SignInRequired(Exception):
    """No usable Partner Center sign-in: run `python -m shared partner-center login`."""


class PartnerCenterAuth:
    def __init__(self, settings: Settings, store: TokenCacheStore, *, http_client: Any = None) -> None:
        self._settings = settings
        self._store = store
        self._http_client = http_client

    @classmethod
    def from_settings(cls, settings: Settings, storage: StorageAccount | None = None) -> PartnerCenterAuth:
        store = TokenCacheStore(
            storage or StorageAccount.from_settings(settings), settings.pc_token_cache_key.get_secret_value()
        )
        return cls(settings, store)

    @property
    def scopes(self) -> tuple[str, str]:
        return (self._settings.pc_api_scope, self._settings.pc_webhook_api_scope)

    def _application(self, cache: Any) -> Any:
        import httpx
        import msal

        authority_host = self._settings.pc_authority_host
        known = (urlsplit(authority_host).hostname or "") in _MICROSOFT_AUTHORITY_HOSTS
        if self._http_client is None:
            self._http_client = httpx.Client(
                verify=tls_context(self._settings.tls_ca_bundle), timeout=self._settings.pc_http_timeout_seconds
            )
        return msal.ConfidentialClientApplication(
            self._settings.pc_client_id,
            client_credential=self._settings.pc_client_secret.get_secret_value(),
            authority=f"{authority_host}/{self._settings.pc_tenant_id}",
            # Instance discovery asks Microsoft about the authority host: only meaningful for Microsoft's.
            instance_discovery=None if known else False,
            http_client=self._http_client,
            token_cache=cache,
        )

    def _load(self) -> tuple[StoredSignIn, Any, Any]:
        import msal

        stored = self._store.load()
        cache = msal.SerializableTokenCache()
        if stored.cache:
            cache.deserialize(stored.cache)
        return stored, cache, self._application(cache)

    def _save(self, stored: StoredSignIn, cache: Any) -> None:
        if cache.has_state_changed:
            stored.cache = cache.serialize()
        self._store.save(stored)

    def login(self, show: Callable[[str], None] = print) -> str:
        """Device code sign-in; `show` receives the instructions for the admin. Returns the account."""
        stored, cache, app = self._load()
        flow = app.client.initiate_device_flow(scope=[self._settings.pc_api_scope, *_DEVICE_CODE_EXTRA_SCOPES])
        if "user_code" not in flow:
            raise SignInRequired(f"device code sign-in could not start: {flow.get('error_description') or flow}")
        show(str(flow["message"]))
        result = app.client.obtain_token_by_device_flow(flow, data={"client_info": "1"})
        if "access_token" not in result:
            raise SignInRequired(
                f"device code sign-in failed: {result.get('error')}: {result.get('error_description')}"
            )
        accounts = app.get_accounts()
        account = str(accounts[0]["username"]) if accounts else "(unknown)"
        stored.account, stored.signed_in_at = account, utc_now_text()
        stored.last_refresh_at, stored.last_refresh_error, stored.last_refresh_error_at = utc_now_text(), None, None
        self._save(stored, cache)
        logger.info("Partner Center sign-in stored for %s", account)
        return account

    def _acquire(self, scope: str, *, force_refresh: bool) -> tuple[StoredSignIn, Any, dict[str, Any]]:
        stored, cache, app = self._load()
        accounts = app.get_accounts()
        if not accounts:
            raise SignInRequired("no Partner Center sign-in is stored: run `python -m shared partner-center login`")
        result = app.acquire_token_silent_with_error([scope], account=accounts[0], force_refresh=force_refresh)
        return stored, cache, result or {"error": "no_token", "error_description": "no token in the cache"}

    def token(self, scope: str) -> str:
        """A bearer token for `scope` (a TokenProvider for the API clients)."""
        for _ in range(3):  # an ETag conflict means another instance refreshed: re-read its cache
            stored, cache, result = self._acquire(scope, force_refresh=False)
            if "access_token" not in result:
                raise SignInRequired(
                    f"Partner Center sign-in failed for {scope}: {result.get('error')}: {result.get('error_description')}"
                )
            if cache.has_state_changed:
                stored.last_refresh_at, stored.last_refresh_error, stored.last_refresh_error_at = (
                    utc_now_text(),
                    None,
                    None,
                )
                try:
                    self._save(stored, cache)
                except TokenStoreConflict:
                    continue
            return str(result["access_token"])
        raise SignInRequired("the Partner Center sign-in kept changing under us; try again")

    def refresh(self) -> dict[str, Any]:
        """Redeem the refresh token now (the timer); records the outcome; returns the health summary."""
        try:
            stored, cache, result = self._acquire(self._settings.pc_api_scope, force_refresh=True)
        except SignInRequired as error:
            logger.error("Partner Center token refresh: %s", error)
            return self.health_summary()
        if "access_token" in result:
            stored.last_refresh_at, stored.last_refresh_error, stored.last_refresh_error_at = utc_now_text(), None, None
        else:
            stored.last_refresh_error = (
                f"{result.get('error')}: {str(result.get('error_description', '')).splitlines()[0]}"
            )
            stored.last_refresh_error_at = utc_now_text()
            logger.error("Partner Center token refresh failed: %s", stored.last_refresh_error)
        try:
            self._save(stored, cache)
        except TokenStoreConflict:
            logger.info("Partner Center token refresh: another instance saved first; its result stands")
        return self.health_summary()

    def record_mfa_refusal(self, error: Exception) -> None:
        """Partner Center refused a call for lack of MFA (900421): keep it for the health page until
        the next successful refresh or sign-in. Never raises (it runs inside a failing call)."""
        try:
            stored = self._store.load()
            stored.last_refresh_error = f"{MFA_PROBLEM} ({error})"[:1000]
            stored.last_refresh_error_at = utc_now_text()
            self._store.save(stored)
        except Exception as failure:  # the refusal itself is already raised to the caller
            logger.warning("could not record the MFA refusal for the health page: %s", failure)

    def health_summary(self) -> dict[str, Any]:
        """What `/api/health/details` shows about the Partner Center sign-in."""
        try:
            stored = self._store.load()
        except Exception as error:  # health must report, never crash
            return {"signed_in": False, "error": f"{type(error).__name__}: {error}"}
        signed_in = bool(stored.cache and stored.account)
        mfa = sign_in_has_mfa(stored.cache) if signed_in else None
        return {
            "signed_in": signed_in,
            "account": stored.account,
            "signed_in_at": stored.signed_in_at,
            "refresh_token_last_used_at": stored.last_refresh_at,
            "last_refresh_error": stored.last_refresh_error,
            "last_refresh_error_at": stored.last_refresh_error_at,
            "mfa": mfa,
            "mfa_problem": MFA_PROBLEM if mfa is False else None,
            "healthy": signed_in and not stored.last_refresh_error and mfa is not False,
        }


MFA_PROBLEM = (
    "the Partner Center sign-in carries no MFA claim, and Partner Center refuses user calls without one "
    "(error 900421): sign in again with `python -m shared partner-center login` as the Referrals Admin "
    "and complete multi-factor authentication (Entra ID: require MFA for that user)"
)


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT we stored ourselves; read for display, not trusted for access."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def sign_in_has_mfa(serialized_cache: str | None) -> bool | None:
    """Whether the stored sign-in's tokens carry an MFA claim (`amr` with "mfa"): True, False, or
    None when no token in the cache says how the user signed in."""
    try:
        cache = json.loads(serialized_cache or "{}")
    except ValueError:
        return None
    said: list[bool] = []
    for section in ("AccessToken", "IdToken"):
        for entry in (cache.get(section) or {}).values():
            claims = _jwt_claims(str(entry.get("secret") or "")) if isinstance(entry, dict) else None
            if claims is not None and "amr" in claims:
                said.append(contract().has_mfa_claim(claims))
    return any(said) if said else None
