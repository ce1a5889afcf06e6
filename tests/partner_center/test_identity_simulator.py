"""The sandbox identity provider, exercised with msal itself and with plain httpx for error bodies."""

from __future__ import annotations

import time
from typing import Any

import httpx
import msal
import pytest

from sandbox import credentials
from sandbox.identity import IdentitySimulator, InvalidAccessToken, verify_access_token
from sandbox.server import RunningServer
from shared.http import tls_context

PC_SCOPE = "https://api.partner.microsoft.com/.default"
PC_RESOURCE = "https://api.partner.microsoft.com"
WEBHOOK_SCOPE = "https://api.partnercenter.microsoft.com/.default"


def _confidential(server: RunningServer, ca_bundle: str, *, secret: str = credentials.PC_CLIENT_SECRET) -> Any:
    return msal.ConfidentialClientApplication(
        credentials.PC_CLIENT_ID,
        client_credential=secret,
        authority=f"{server.url}/{credentials.TENANT_ID}",
        instance_discovery=False,
        # requests (MSAL's default transport) lets REQUESTS_CA_BUNDLE override `verify=`; an httpx
        # client with an explicit CA bundle is what the app uses too.
        http_client=httpx.Client(verify=tls_context(ca_bundle)),
        token_cache=msal.SerializableTokenCache(),
    )


def _token_endpoint(server: RunningServer) -> str:
    return f"{server.url}/{credentials.TENANT_ID}/oauth2/v2.0/token"


def test_msal_client_credentials_token_is_verifiable(
    identity_server: RunningServer, identity: IdentitySimulator, ca_bundle: str
) -> None:
    app = _confidential(identity_server, ca_bundle)
    result = app.acquire_token_for_client(scopes=[PC_SCOPE])
    assert "access_token" in result, result
    claims = verify_access_token(result["access_token"], audience=PC_RESOURCE)
    assert claims["appid"] == credentials.PC_CLIENT_ID
    assert claims["tid"] == credentials.TENANT_ID
    assert claims["iss"] == f"{identity_server.url}/{credentials.TENANT_ID}/v2.0"
    assert "scp" not in claims and "upn" not in claims
    with pytest.raises(InvalidAccessToken, match="audience"):
        verify_access_token(result["access_token"], audience="https://api.partnercenter.microsoft.com")


def test_wrong_client_secret_is_invalid_client_401(
    identity_server: RunningServer, identity: IdentitySimulator, ca_bundle: str
) -> None:
    response = httpx.post(
        _token_endpoint(identity_server),
        data={
            "grant_type": "client_credentials",
            "client_id": credentials.PC_CLIENT_ID,
            "client_secret": "wrong",
            "scope": PC_SCOPE,
        },
        verify=tls_context(ca_bundle),
    )
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "invalid_client"
    assert body["error_codes"] == [7000215]
    assert body["error_description"].startswith("AADSTS7000215:")


def test_msal_reports_invalid_client(
    identity_server: RunningServer, identity: IdentitySimulator, ca_bundle: str
) -> None:
    result = _confidential(identity_server, ca_bundle, secret="wrong").acquire_token_for_client(scopes=[PC_SCOPE])
    assert result.get("error") == "invalid_client"


def test_unknown_tenant_is_refused(identity_server: RunningServer, identity: IdentitySimulator, ca_bundle: str) -> None:
    response = httpx.get(
        f"{identity_server.url}/other-tenant/v2.0/.well-known/openid-configuration", verify=tls_context(ca_bundle)
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_tenant"


def test_device_code_login_then_refresh_for_both_audiences(
    identity_server: RunningServer, identity: IdentitySimulator, ca_bundle: str
) -> None:
    app = _confidential(identity_server, ca_bundle)
    flow = app.client.initiate_device_flow(scope=[PC_SCOPE, "offline_access", "openid", "profile"])
    assert flow["user_code"] and flow["interval"] == 1
    result = app.client.obtain_token_by_device_flow(flow, data={"client_info": "1"})
    assert "access_token" in result, result
    claims = verify_access_token(result["access_token"], audience=PC_RESOURCE)
    assert claims["upn"] == credentials.PC_ADMIN_USER
    assert claims["scp"] and claims["oid"]
    accounts = app.get_accounts()
    assert [account["username"] for account in accounts] == [credentials.PC_ADMIN_USER]

    # A silent call for the other API redeems the (multi-resource) refresh token.
    silent = app.acquire_token_silent([WEBHOOK_SCOPE], account=accounts[0])
    assert silent and "access_token" in silent, silent
    verify_access_token(silent["access_token"], audience="https://api.partnercenter.microsoft.com")
    assert [token["used_count"] for token in identity.state()["refresh_tokens"]][0] == 1


def test_manual_approval_keeps_the_code_pending(
    identity_server: RunningServer, identity: IdentitySimulator, ca_bundle: str
) -> None:
    httpx.post(
        f"{identity_server.url}/_sandbox/settings",
        json={"device_code_approval": "manual"},
        verify=tls_context(ca_bundle),
    ).raise_for_status()
    app = _confidential(identity_server, ca_bundle)
    flow = app.client.initiate_device_flow(scope=[PC_SCOPE, "offline_access", "openid", "profile"])
    pending = app.client.obtain_token_by_device_flow(flow, exit_condition=lambda flow: True)
    assert pending["error"] == "authorization_pending"
    approved = httpx.post(
        f"{identity_server.url}/_sandbox/device-codes/approve",
        json={"user_code": flow["user_code"]},
        verify=tls_context(ca_bundle),
    )
    assert approved.json() == {"approved": [flow["user_code"]]}
    flow["latest_attempt_at"] = 0
    result = app.client.obtain_token_by_device_flow(flow, exit_condition=lambda flow: True)
    assert "access_token" in result, result


def test_expired_device_code(identity_server: RunningServer, identity: IdentitySimulator, ca_bundle: str) -> None:
    httpx.post(
        f"{identity_server.url}/_sandbox/settings",
        json={"device_code_lifetime_seconds": 0, "device_code_approval": "manual"},
        verify=tls_context(ca_bundle),
    ).raise_for_status()
    app = _confidential(identity_server, ca_bundle)
    flow = app.client.initiate_device_flow(scope=[PC_SCOPE, "offline_access"])
    time.sleep(0.01)  # the code's lifetime is 0 s: any later poll is past it
    result = app.client.obtain_token_by_device_flow(flow, exit_condition=lambda flow: True)
    assert result["error"] == "expired_token"


def test_revoked_refresh_token_is_invalid_grant(
    identity_server: RunningServer, identity: IdentitySimulator, ca_bundle: str
) -> None:
    app = _confidential(identity_server, ca_bundle)
    flow = app.client.initiate_device_flow(scope=[PC_SCOPE, "offline_access", "openid", "profile"])
    result = app.client.obtain_token_by_device_flow(flow, data={"client_info": "1"})
    refresh_token = result["refresh_token"]
    httpx.post(
        f"{identity_server.url}/_sandbox/revoke-refresh-tokens", verify=tls_context(ca_bundle)
    ).raise_for_status()
    refused = app.acquire_token_by_refresh_token(refresh_token, scopes=[PC_SCOPE])
    assert refused["error"] == "invalid_grant"
    assert 700082 in refused["error_codes"]


def test_access_token_lifetime_is_configurable(
    identity_server: RunningServer, identity: IdentitySimulator, ca_bundle: str
) -> None:
    httpx.post(
        f"{identity_server.url}/_sandbox/settings",
        json={"access_token_lifetime_seconds": 0},
        verify=tls_context(ca_bundle),
    ).raise_for_status()
    response = httpx.post(
        _token_endpoint(identity_server),
        data={
            "grant_type": "client_credentials",
            "client_id": credentials.PC_CLIENT_ID,
            "client_secret": credentials.PC_CLIENT_SECRET,
            "scope": PC_SCOPE,
        },
        verify=tls_context(ca_bundle),
    )
    assert response.json()["expires_in"] == 0
    deadline = time.monotonic() + 5
    while True:  # PyJWT allows no leeway: the token is expired once the clock passes exp
        try:
            verify_access_token(response.json()["access_token"], audience=PC_RESOURCE)
        except InvalidAccessToken as error:
            assert "expired" in error.reason
            break
        assert time.monotonic() < deadline, "token never expired"
        time.sleep(0.05)


def test_tampered_token_fails_signature(
    identity_server: RunningServer, identity: IdentitySimulator, ca_bundle: str
) -> None:
    token = _confidential(identity_server, ca_bundle).acquire_token_for_client(scopes=[PC_SCOPE])["access_token"]
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    with pytest.raises(InvalidAccessToken):
        verify_access_token(f"{header}.{payload}.{flipped}", audience=PC_RESOURCE)


def test_jwks_publishes_the_signing_key(identity_server: RunningServer, ca_bundle: str) -> None:
    config = httpx.get(
        f"{identity_server.url}/{credentials.TENANT_ID}/v2.0/.well-known/openid-configuration",
        verify=tls_context(ca_bundle),
    ).json()
    keys = httpx.get(config["jwks_uri"], verify=tls_context(ca_bundle)).json()["keys"]
    assert keys[0]["kty"] == "RSA" and keys[0]["alg"] == "RS256"
    assert config["device_authorization_endpoint"].endswith("/oauth2/v2.0/devicecode")
