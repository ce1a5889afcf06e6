"""Delegated sign-in: device code login stored encrypted in Azurite, refreshed by new processes and the timer."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from sandbox import credentials
from sandbox.azurite import Azurite
from sandbox.identity import IdentitySimulator, verify_access_token
from sandbox.server import RunningServer
from shared.http import tls_context
from shared.partner_center.auth import PartnerCenterAuth, SignInRequired
from shared.partner_center.token_store import TOKEN_CACHE_TABLE, TokenCacheStore
from shared.settings import Settings, load_settings
from shared.sync.storage import StorageAccount
from tests.conftest import base_environment

pytestmark = pytest.mark.azurite


@pytest.fixture
def pc_settings(storage: StorageAccount, azurite: Azurite, identity_server: RunningServer, ca_bundle: str) -> Settings:
    connection = azurite.connection_string
    return load_settings(base_environment(connection, PC_AUTHORITY_HOST=identity_server.url, TLS_CA_BUNDLE=ca_bundle))


@pytest.fixture
def fresh_store(storage: StorageAccount, pc_settings: Settings) -> TokenCacheStore:
    store = TokenCacheStore(storage, pc_settings.pc_token_cache_key.get_secret_value())
    from azure.core.exceptions import ResourceNotFoundError

    with contextlib.suppress(ResourceNotFoundError):  # nothing stored yet
        store.delete()
    return store


def new_process(settings: Settings, storage: StorageAccount) -> PartnerCenterAuth:
    """A brand-new auth object with a new MSAL app: it knows only what storage holds."""
    return PartnerCenterAuth.from_settings(settings, storage)


def test_login_stores_an_encrypted_cache_and_a_new_process_refreshes_from_it(
    pc_settings: Settings, storage: StorageAccount, fresh_store: TokenCacheStore, identity: IdentitySimulator
) -> None:
    with pytest.raises(SignInRequired):
        new_process(pc_settings, storage).token(pc_settings.pc_api_scope)
    prompts: list[str] = []
    account = new_process(pc_settings, storage).login(prompts.append)
    assert account == credentials.PC_ADMIN_USER
    assert "enter the code" in prompts[0]

    row = storage.table_client(TOKEN_CACHE_TABLE).get_entity("partnercenter", "msal")
    assert row["Account"] == credentials.PC_ADMIN_USER
    assert "refresh_token" not in row["Cache"].lower() and "RefreshToken" not in row["Cache"]

    # Another process: the webhook API token needs the stored refresh token (none cached for it).
    token = new_process(pc_settings, storage).token(pc_settings.pc_webhook_api_scope)
    assert (
        verify_access_token(token, audience="https://api.partnercenter.microsoft.com")["upn"]
        == credentials.PC_ADMIN_USER
    )
    assert identity.state()["refresh_tokens"][0]["used_count"] == 1
    # And the Referrals API token from the login is served from the stored cache.
    api_token = new_process(pc_settings, storage).token(pc_settings.pc_api_scope)
    verify_access_token(api_token, audience="https://api.partner.microsoft.com")


def test_refresh_timer_keeps_it_fresh_and_a_revoked_token_shows_in_health(
    pc_settings: Settings,
    storage: StorageAccount,
    fresh_store: TokenCacheStore,
    identity: IdentitySimulator,
    identity_server: RunningServer,
    ca_bundle: str,
) -> None:
    new_process(pc_settings, storage).login(lambda message: None)
    used_before = sum(token["used_count"] for token in identity.state()["refresh_tokens"])
    summary = new_process(pc_settings, storage).refresh()
    assert sum(token["used_count"] for token in identity.state()["refresh_tokens"]) == used_before + 1
    assert summary["signed_in"] and summary["healthy"] and summary["last_refresh_error"] is None
    assert summary["account"] == credentials.PC_ADMIN_USER and summary["refresh_token_last_used_at"]

    httpx.post(
        f"{identity_server.url}/_sandbox/revoke-refresh-tokens", verify=tls_context(ca_bundle)
    ).raise_for_status()
    failed = new_process(pc_settings, storage).refresh()
    assert failed["healthy"] is False
    assert failed["last_refresh_error"].startswith("invalid_grant: AADSTS700082")
    assert new_process(pc_settings, storage).health_summary()["last_refresh_error"] == failed["last_refresh_error"]


def test_a_wrong_cache_key_is_a_clear_error(
    pc_settings: Settings, storage: StorageAccount, fresh_store: TokenCacheStore, identity: IdentitySimulator
) -> None:
    new_process(pc_settings, storage).login(lambda message: None)
    other_key = TokenCacheStore(storage, "A" * 43 + "=")
    with pytest.raises(Exception, match="PC_TOKEN_CACHE_KEY"):
        other_key.load()
