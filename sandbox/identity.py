"""The sandbox Entra ID: OIDC discovery, JWKS, device code and the token endpoint.

Served at `https://127.0.0.1:7100/{tenant}/...` (the paths of login.microsoftonline.com), so MSAL
talks to it unchanged once `instance_discovery=False` (MSAL only asks Microsoft's instance
discovery about hosts it does not know).

    GET  /{tenant}/v2.0/.well-known/openid-configuration
    GET  /{tenant}/discovery/v2.0/keys
    POST /{tenant}/oauth2/v2.0/devicecode
    POST /{tenant}/oauth2/v2.0/token      grants: client_credentials, refresh_token, device_code

Errors use Entra's body: `{"error", "error_description": "AADSTSnnnn: ...", "error_codes",
"timestamp", "trace_id", "correlation_id", "error_uri"}` with Entra's status codes (401 for
`invalid_client`, 400 otherwise).

Device codes are approved as the sandbox admin (`credentials.PC_ADMIN_USER`). By default the
first poll approves the code (so `login` completes without a browser); after
`POST /_sandbox/settings {"device_code_approval": "manual"}` a code stays `authorization_pending`
until `POST /_sandbox/device-codes/approve` (body `{"user_code": ...}` or empty for all).

Other controls: `POST /_sandbox/revoke-refresh-tokens` (every refresh token issued so far fails
with `invalid_grant`/AADSTS700082), `POST /_sandbox/settings` with any of
`access_token_lifetime_seconds`, `device_code_lifetime_seconds`, `device_code_interval_seconds`,
`device_code_approval` (`first-poll` | `manual`), `sign_in_mfa` (true | false: whether the next
device-code sign-in completes multi-factor authentication; its tokens, refreshed ones included,
carry `amr` with or without "mfa", and Partner Center refuses user calls without it).

Tokens are RS256 JWTs signed with a key kept in `$SANDBOX_DIR/identity-signing-key.pem` (created on
first use); `verify_access_token` reads the same file, so other simulators (in this process or
another) check tokens without calling this server.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox import credentials
from sandbox.server import JsonDict, Request, Response, Simulator, empty_response, json_response, route
from sandbox.tls import sandbox_dir

SIGNING_KEY_FILE = "identity-signing-key.pem"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
_key_lock = threading.Lock()

DeviceCodeApproval = Literal["first-poll", "manual"]


class InvalidAccessToken(Exception):
    """A bearer token failed verification; `reason` says why in plain words."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# ---- signing key (shared across processes through $SANDBOX_DIR) ----------------------------------
def _key_path(directory: Path | None = None) -> Path:
    return (directory or sandbox_dir()) / SIGNING_KEY_FILE


def signing_key(directory: Path | None = None) -> rsa.RSAPrivateKey:
    """The identity provider's RSA key, created on first use."""
    path = _key_path(directory)
    with _key_lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            temporary = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
            temporary.write_bytes(pem)
            temporary.chmod(0o600)
            temporary.replace(path)  # atomic: a concurrent reader never sees half a key
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise TypeError(f"{path} does not hold an RSA key")
    return loaded


_public_keys: dict[tuple[Path, int], rsa.RSAPublicKey] = {}


def _public_key(path: Path) -> rsa.RSAPublicKey:
    """The verification key, loaded once per key file version (loading an RSA private key is slow)."""
    if not path.exists():
        signing_key(path.parent)
    version = (path, path.stat().st_mtime_ns)
    cached = _public_keys.get(version)
    if cached is None:
        cached = _public_keys[version] = signing_key(path.parent).public_key()
    return cached


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _key_id(public_key: rsa.RSAPublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _b64url(hashlib.sha256(der).digest()[:20])


def _jwk(public_key: rsa.RSAPublicKey) -> JsonDict:
    numbers = public_key.public_numbers()
    return {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": _key_id(public_key),
        "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
    }


def resource_of_scope(scope: str) -> str:
    """`https://api.partner.microsoft.com/.default` -> `https://api.partner.microsoft.com`."""
    return scope.rsplit("/", 1)[0] if "/" in scope.removeprefix("https://") else scope


def verify_access_token(token: str, *, audience: str) -> dict[str, Any]:
    """Check a bearer token issued by the sandbox identity provider; returns its claims.

    Raises `InvalidAccessToken` for a malformed token, a bad signature, another audience or an
    expired token. Needs no running identity server: the key comes from `$SANDBOX_DIR`.
    """
    public_key = _public_key(_key_path())
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=["RS256"],
            audience=audience,
            options={"require": ["exp", "aud", "iss", "tid"]},
        )
    except jwt.ExpiredSignatureError as error:
        raise InvalidAccessToken("the token has expired") from error
    except jwt.InvalidAudienceError as error:
        raise InvalidAccessToken(f"the token is not for audience {audience}") from error
    except jwt.InvalidSignatureError as error:
        raise InvalidAccessToken("the token signature is invalid") from error
    except jwt.PyJWTError as error:
        raise InvalidAccessToken(f"the token is malformed: {error}") from error
    return claims


def _methods(mfa: bool) -> list[str]:
    """The `amr` claim: how the user signed in (Entra lists "mfa" when MFA was completed)."""
    return ["pwd", "mfa"] if mfa else ["pwd"]


# ---- records ------------------------------------------------------------------------------------
@dataclass
class _DeviceCode:
    device_code: str
    user_code: str
    client_id: str
    tenant: str
    scopes: list[str]
    expires_at: float
    approved: bool = False
    redeemed: bool = False


@dataclass
class _RefreshToken:
    client_id: str
    tenant: str
    user: str
    issued_at: float
    revoked: bool = False
    mfa: bool = True  # the sign-in it came from completed MFA: its access tokens say so (`amr`)
    used_count: int = 0
    last_used_at: float | None = None


@dataclass
class _Settings:
    access_token_lifetime_seconds: int = 3600
    device_code_lifetime_seconds: int = 900
    device_code_interval_seconds: int = 5
    device_code_approval: DeviceCodeApproval = "first-poll"
    sign_in_mfa: bool = True  # whether the next device-code sign-in completes multi-factor authentication
    issued: list[JsonDict] = field(default_factory=list)


class _TokenError(Exception):
    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.code = code
        self.description = description


def _user_object_id(user: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-user:{user}"))


def _app_object_id(client_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-app:{client_id}"))


def _user_code() -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(9))


class IdentitySimulator(Simulator):
    """The sandbox Entra ID (see the module docstring for the contract)."""

    name = "identity"

    def __init__(
        self,
        base_url: str = "",
        *,
        tenants: tuple[str, ...] = (credentials.TENANT_ID,),
        clients: dict[str, str] | None = None,
        admin_user: str = credentials.PC_ADMIN_USER,
        device_code_interval_seconds: int = 5,
        device_code_approval: DeviceCodeApproval = "first-poll",
        access_token_lifetime_seconds: int = 3600,
    ) -> None:
        self.tenants = tenants
        self.clients = dict(clients if clients is not None else credentials.IDENTITY_CLIENTS)
        self.admin_user = admin_user
        self._initial = _Settings(
            access_token_lifetime_seconds=access_token_lifetime_seconds,
            device_code_interval_seconds=device_code_interval_seconds,
            device_code_approval=device_code_approval,
        )
        self._key = signing_key()
        super().__init__(base_url)

    # ---- records --------------------------------------------------------------------------------
    def reset_records(self) -> None:
        self.settings = _Settings(
            access_token_lifetime_seconds=self._initial.access_token_lifetime_seconds,
            device_code_interval_seconds=self._initial.device_code_interval_seconds,
            device_code_approval=self._initial.device_code_approval,
        )
        self.device_codes: dict[str, _DeviceCode] = {}
        self.refresh_tokens: dict[str, _RefreshToken] = {}

    def state(self) -> JsonDict:
        return {
            "settings": {
                "access_token_lifetime_seconds": self.settings.access_token_lifetime_seconds,
                "device_code_lifetime_seconds": self.settings.device_code_lifetime_seconds,
                "device_code_interval_seconds": self.settings.device_code_interval_seconds,
                "device_code_approval": self.settings.device_code_approval,
            },
            "device_codes": [
                {
                    "user_code": code.user_code,
                    "client_id": code.client_id,
                    "scopes": code.scopes,
                    "approved": code.approved,
                    "redeemed": code.redeemed,
                }
                for code in self.device_codes.values()
            ],
            # Refresh tokens themselves are never shown, only their bookkeeping.
            "refresh_tokens": [
                {
                    "client_id": record.client_id,
                    "user": record.user,
                    "revoked": record.revoked,
                    "used_count": record.used_count,
                    "last_used_at": record.last_used_at,
                }
                for record in self.refresh_tokens.values()
            ],
            "issued_tokens": list(self.settings.issued),
        }

    # ---- helpers --------------------------------------------------------------------------------
    def issuer(self, tenant: str) -> str:
        return f"{self.base_url}/{tenant}/v2.0"

    def _error(self, failure: _TokenError) -> Response:
        now = dt.datetime.now(dt.UTC)
        return json_response(
            failure.status,
            {
                "error": failure.error,
                "error_description": f"AADSTS{failure.code}: {failure.description}\r\n"
                f"Trace ID: {uuid.uuid4()}\r\nCorrelation ID: {uuid.uuid4()}\r\n"
                f"Timestamp: {now.strftime('%Y-%m-%d %H:%M:%SZ')}",
                "error_codes": [failure.code],
                "timestamp": now.strftime("%Y-%m-%d %H:%M:%SZ"),
                "trace_id": str(uuid.uuid4()),
                "correlation_id": str(uuid.uuid4()),
                "error_uri": f"{self.base_url}/error?code={failure.code}",
            },
        )

    def _check_tenant(self, tenant: str) -> None:
        if tenant not in self.tenants:
            raise _TokenError(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
                "signing into the correct cloud.",
            )

    @staticmethod
    def _form(request: Request) -> dict[str, str]:
        content_type = (request.header("content-type") or "").lower()
        if "application/x-www-form-urlencoded" not in content_type:
            raise _TokenError(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            )
        parsed = parse_qs(request.body.decode("utf-8"), keep_blank_values=True)
        return {name: values[0] for name, values in parsed.items()}

    def _client(self, request: Request, form: dict[str, str], *, secret_required: bool) -> str:
        """The authenticated client id: secret in the body or HTTP Basic (both are what Entra accepts)."""
        client_id = form.get("client_id")
        client_secret = form.get("client_secret")
        authorization = request.header("authorization") or ""
        if authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:]).decode("utf-8")
            except ValueError as error:
                raise _TokenError(401, "invalid_client", 7000215, "Invalid client secret provided.") from error
            basic_id, _, basic_secret = decoded.partition(":")
            client_id, client_secret = unquote(basic_id.replace("+", " ")), unquote(basic_secret.replace("+", " "))
        if not client_id:
            raise _TokenError(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."
            )
        if client_id not in self.clients:
            raise _TokenError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory. This can happen if "
                "the application has not been installed by the administrator of the tenant.",
            )
        if client_secret is None:
            if secret_required:
                raise _TokenError(
                    401,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                )
        elif not secrets.compare_digest(client_secret, self.clients[client_id]):
            raise _TokenError(
                401,
                "invalid_client",
                7000215,
                f"Invalid client secret provided. Ensure the secret being sent in the request is the client "
                f"secret value, not the client secret ID, for a secret added to app '{client_id}'.",
            )
        return client_id

    @staticmethod
    def _resource_scopes(scope_parameter: str | None) -> tuple[str, list[str]]:
        """(resource, requested scopes); Entra issues a token for one resource at a time."""
        scopes = (scope_parameter or "").split()
        resources = {resource_of_scope(scope) for scope in scopes if scope not in _OIDC_SCOPES}
        if len(resources) != 1:
            raise _TokenError(
                400,
                "invalid_scope",
                70011,
                f"The provided value for the input parameter 'scope' is not valid. The scope '{scope_parameter}' "
                "must name exactly one resource.",
            )
        return resources.pop(), scopes

    def _sign(self, claims: JsonDict) -> str:
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": _key_id(self._key.public_key())})

    def _access_token(
        self, *, tenant: str, client_id: str, resource: str, user: str | None, mfa: bool = False
    ) -> tuple[str, int]:
        now = int(time.time())
        lifetime = self.settings.access_token_lifetime_seconds
        claims: JsonDict = {
            "aud": resource,
            "iss": self.issuer(tenant),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "tid": tenant,
            "appid": client_id,
            "azp": client_id,
            "ver": "1.0",
            "uti": _b64url(secrets.token_bytes(16)),
        }
        if user is None:
            claims |= {"oid": _app_object_id(client_id), "sub": _app_object_id(client_id), "idtyp": "app"}
        else:
            claims |= {
                "oid": _user_object_id(user),
                "sub": _user_object_id(user),
                "upn": user,
                "unique_name": user,
                "name": "Sandbox Referrals Admin",
                "scp": "user_impersonation",
                "amr": _methods(mfa),
            }
        self.settings.issued.append({"aud": resource, "appid": client_id, "upn": user, "exp": now + lifetime})
        return self._sign(claims), lifetime

    def _delegated_response(
        self, *, tenant: str, client_id: str, user: str, scopes: list[str], resource: str, mfa: bool
    ) -> JsonDict:
        access_token, lifetime = self._access_token(
            tenant=tenant, client_id=client_id, resource=resource, user=user, mfa=mfa
        )
        now = int(time.time())
        oid = _user_object_id(user)
        id_token = self._sign(
            {
                "aud": client_id,
                "iss": self.issuer(tenant),
                "iat": now,
                "nbf": now,
                "exp": now + 3600,
                "sub": oid,
                "oid": oid,
                "tid": tenant,
                "preferred_username": user,
                "name": "Sandbox Referrals Admin",
                "amr": _methods(mfa),
                "ver": "2.0",
            }
        )
        refresh_token = "sbx-rt." + secrets.token_urlsafe(48)
        self.refresh_tokens[refresh_token] = _RefreshToken(client_id, tenant, user, issued_at=time.time(), mfa=mfa)
        # Echo the requested scopes (the `.default` scope included): MSAL files the token in its
        # cache under this `scope`, and a later silent call for the same scopes finds it there.
        granted = [scope for scope in scopes if scope != "offline_access"]
        return {
            "token_type": "Bearer",
            "scope": " ".join(granted),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
            "refresh_token": refresh_token,
            "id_token": id_token,
            "client_info": _b64url(json.dumps({"uid": oid, "utid": tenant}).encode("utf-8")),
        }

    # ---- discovery ------------------------------------------------------------------------------
    @route("GET", "/{tenant}/v2.0/.well-known/openid-configuration")
    def openid_configuration(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        try:
            self._check_tenant(tenant)
        except _TokenError as failure:
            return self._error(failure)
        prefix = f"{self.base_url}/{tenant}"
        return json_response(
            200,
            {
                "issuer": self.issuer(tenant),
                "authorization_endpoint": f"{prefix}/oauth2/v2.0/authorize",
                "token_endpoint": f"{prefix}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{prefix}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{prefix}/discovery/v2.0/keys",
                "end_session_endpoint": f"{prefix}/oauth2/v2.0/logout",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "grant_types_supported": ["client_credentials", "refresh_token", DEVICE_CODE_GRANT],
                "tenant_region_scope": "EU",
                "cloud_instance_name": "sandbox",
            },
        )

    @route("GET", "/{tenant}/discovery/v2.0/keys")
    def keys(self, request: Request) -> Response:
        return json_response(200, {"keys": [_jwk(self._key.public_key())]})

    # ---- device code ----------------------------------------------------------------------------
    @route("POST", "/{tenant}/oauth2/v2.0/devicecode")
    def device_code(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        try:
            self._check_tenant(tenant)
            form = self._form(request)
            client_id = self._client(request, form, secret_required=False)
            _, scopes = self._resource_scopes(form.get("scope"))
        except _TokenError as failure:
            return self._error(failure)
        with self.lock:
            record = _DeviceCode(
                device_code="sbx-dc." + secrets.token_urlsafe(32),
                user_code=_user_code(),
                client_id=client_id,
                tenant=tenant,
                scopes=scopes,
                expires_at=time.time() + self.settings.device_code_lifetime_seconds,
            )
            self.device_codes[record.device_code] = record
            interval = self.settings.device_code_interval_seconds
            lifetime = self.settings.device_code_lifetime_seconds
        verification_uri = f"{self.base_url}/devicelogin"
        return json_response(
            200,
            {
                "user_code": record.user_code,
                "device_code": record.device_code,
                "verification_uri": verification_uri,
                "expires_in": lifetime,
                "interval": interval,
                "message": f"To sign in, use a web browser to open the page {verification_uri} and enter the "
                f"code {record.user_code} to authenticate.",
            },
        )

    # ---- token endpoint -------------------------------------------------------------------------
    @route("POST", "/{tenant}/oauth2/v2.0/token")
    def token(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        try:
            self._check_tenant(tenant)
            form = self._form(request)
            grant_type = form.get("grant_type")
            with self.lock:
                if grant_type == "client_credentials":
                    payload = self._grant_client_credentials(request, form, tenant)
                elif grant_type == "refresh_token":
                    payload = self._grant_refresh_token(request, form, tenant)
                elif grant_type == DEVICE_CODE_GRANT:
                    payload = self._grant_device_code(request, form, tenant)
                elif not grant_type:
                    raise _TokenError(
                        400,
                        "invalid_request",
                        900144,
                        "The request body must contain the following parameter: 'grant_type'.",
                    )
                else:
                    raise _TokenError(
                        400,
                        "unsupported_grant_type",
                        70003,
                        f"The app requested an unsupported grant type '{grant_type}'.",
                    )
        except _TokenError as failure:
            return self._error(failure)
        return json_response(200, payload, {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

    def _grant_client_credentials(self, request: Request, form: dict[str, str], tenant: str) -> JsonDict:
        client_id = self._client(request, form, secret_required=True)
        resource, scopes = self._resource_scopes(form.get("scope"))
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise _TokenError(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {form.get('scope')} is not valid. Client credential flows must "
                "have a scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        access_token, lifetime = self._access_token(tenant=tenant, client_id=client_id, resource=resource, user=None)
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        }

    def _grant_refresh_token(self, request: Request, form: dict[str, str], tenant: str) -> JsonDict:
        client_id = self._client(request, form, secret_required=False)
        presented = form.get("refresh_token") or ""
        record = self.refresh_tokens.get(presented)
        if record is None or record.client_id != client_id or record.tenant != tenant:
            raise _TokenError(
                400,
                "invalid_grant",
                9002313,
                "Invalid request. Request is malformed or invalid (the refresh token is not valid).",
            )
        if record.revoked:
            raise _TokenError(
                400,
                "invalid_grant",
                700082,
                "The refresh token has expired due to inactivity. The token was issued on "
                f"{dt.datetime.fromtimestamp(record.issued_at, dt.UTC).isoformat()} and was inactive for 90.00:00:00.",
            )
        # Entra refresh tokens are multi-resource: one sign-in yields tokens for any consented API.
        resource, scopes = self._resource_scopes(form.get("scope"))
        record.used_count += 1
        record.last_used_at = time.time()
        return self._delegated_response(
            tenant=tenant, client_id=client_id, user=record.user, scopes=scopes, resource=resource, mfa=record.mfa
        )

    def _grant_device_code(self, request: Request, form: dict[str, str], tenant: str) -> JsonDict:
        # Device code is a public-client flow; a confidential client may still authenticate (then the
        # secret must be right). Real Entra's stance on secrets here is not documented in our reference.
        client_id = self._client(request, form, secret_required=False)
        record = self.device_codes.get(form.get("device_code") or "")
        if record is None or record.client_id != client_id:
            raise _TokenError(400, "invalid_grant", 70000, "The provided value for the 'device_code' is not valid.")
        if record.redeemed:
            raise _TokenError(400, "invalid_grant", 54005, "OAuth2 Authorization code was already redeemed.")
        if time.time() > record.expires_at:
            raise _TokenError(400, "expired_token", 70020, "The provided value for the 'device_code' has expired.")
        if not record.approved and self.settings.device_code_approval == "first-poll":
            record.approved = True
        if not record.approved:
            raise _TokenError(
                400,
                "authorization_pending",
                70016,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            )
        record.redeemed = True
        resource, _ = self._resource_scopes(" ".join(record.scopes))
        return self._delegated_response(
            tenant=tenant,
            client_id=client_id,
            user=self.admin_user,
            scopes=record.scopes,
            resource=resource,
            mfa=self.settings.sign_in_mfa,
        )

    # ---- control API ----------------------------------------------------------------------------
    @route("POST", "/_sandbox/device-codes/approve")
    def _control_approve(self, request: Request) -> Response:
        body = request.json() or {}
        user_code = body.get("user_code") if isinstance(body, dict) else None
        with self.lock:
            approved = [
                code.user_code
                for code in self.device_codes.values()
                if not code.redeemed and (user_code is None or code.user_code == user_code)
            ]
            if user_code is not None and not approved:
                return json_response(404, {"error": {"code": "NotFound", "message": f"no device code {user_code}"}})
            for code in self.device_codes.values():
                if code.user_code in approved:
                    code.approved = True
        return json_response(200, {"approved": approved})

    @route("POST", "/_sandbox/revoke-refresh-tokens")
    def _control_revoke(self, request: Request) -> Response:
        with self.lock:
            for record in self.refresh_tokens.values():
                record.revoked = True
            count = len(self.refresh_tokens)
        return json_response(200, {"revoked": count})

    @route("POST", "/_sandbox/settings")
    def _control_settings(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            return json_response(400, {"error": {"code": "BadSettings", "message": "body must be a JSON object"}})
        numeric = ("access_token_lifetime_seconds", "device_code_lifetime_seconds", "device_code_interval_seconds")
        with self.lock:
            for name, value in body.items():
                if name in numeric and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    setattr(self.settings, name, value)
                elif name == "device_code_approval" and value in ("first-poll", "manual"):
                    self.settings.device_code_approval = value
                elif name == "sign_in_mfa" and isinstance(value, bool):
                    self.settings.sign_in_mfa = value
                else:
                    return json_response(
                        400, {"error": {"code": "BadSettings", "message": f"{name}={value!r} is not a valid setting"}}
                    )
        return empty_response(204)


def identity_factory(**options: Any) -> Callable[[str], IdentitySimulator]:
    """`serve(identity_factory(), port=7100)`: a factory that builds the simulator with its URL."""

    def build(base_url: str) -> IdentitySimulator:
        return IdentitySimulator(base_url, **options)

    return build
