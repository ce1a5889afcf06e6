"""The Partner Center sign-in (MSAL token cache) kept in Table storage, encrypted at rest.

One row (`tokencache` table, PartitionKey `partnercenter`, RowKey `msal`) holds the serialized MSAL
cache encrypted with Fernet under PC_TOKEN_CACHE_KEY, plus plain bookkeeping for the health page:
the signed-in account, when the refresh token was last used, the last refresh error. Writes carry
the row's ETag, so two instances refreshing at once cannot overwrite each other's newer cache.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from shared.sync.storage import StorageAccount

TOKEN_CACHE_TABLE = "tokencache"
_PARTITION = "partnercenter"
_ROW = "msal"


class TokenStoreError(Exception):
    """The stored sign-in cannot be read (wrong PC_TOKEN_CACHE_KEY or a damaged row)."""


class TokenStoreConflict(TokenStoreError):
    """Another instance saved the sign-in since we read it: re-read and retry."""


@dataclass
class StoredSignIn:
    cache: str | None = None  # serialized MSAL cache (decrypted)
    account: str | None = None
    signed_in_at: str | None = None
    last_refresh_at: str | None = None
    last_refresh_error: str | None = None
    last_refresh_error_at: str | None = None
    etag: str | None = field(default=None, repr=False)


class TokenCacheStore:
    def __init__(self, storage: StorageAccount, key: str) -> None:
        self._storage = storage
        self._fernet = Fernet(key.encode("ascii"))
        self._table: Any = None

    def _client(self) -> Any:
        if self._table is None:
            client = self._storage.table_client(TOKEN_CACHE_TABLE)
            self._storage.ensure_table(client)
            self._table = client
        return self._table

    def load(self) -> StoredSignIn:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._client().get_entity(_PARTITION, _ROW)
        except ResourceNotFoundError:
            return StoredSignIn()
        cache = None
        if entity.get("Cache"):
            try:
                cache = self._fernet.decrypt(str(entity["Cache"]).encode("ascii")).decode("utf-8")
            except InvalidToken as error:
                raise TokenStoreError(
                    "the stored Partner Center sign-in cannot be decrypted: PC_TOKEN_CACHE_KEY differs from the key "
                    "it was saved with; sign in again with `python -m shared partner-center login`"
                ) from error
        return StoredSignIn(
            cache=cache,
            account=entity.get("Account") or None,
            signed_in_at=entity.get("SignedInAt") or None,
            last_refresh_at=entity.get("LastRefreshAt") or None,
            last_refresh_error=entity.get("LastRefreshError") or None,
            last_refresh_error_at=entity.get("LastRefreshErrorAt") or None,
            etag=entity.metadata.get("etag"),
        )

    def save(self, sign_in: StoredSignIn) -> StoredSignIn:
        """Write `sign_in` (create if it has no ETag, else replace if unchanged since read)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        entity = {
            "PartitionKey": _PARTITION,
            "RowKey": _ROW,
            "Cache": self._fernet.encrypt(sign_in.cache.encode("utf-8")).decode("ascii") if sign_in.cache else "",
            "Account": sign_in.account or "",
            "SignedInAt": sign_in.signed_in_at or "",
            "LastRefreshAt": sign_in.last_refresh_at or "",
            "LastRefreshError": sign_in.last_refresh_error or "",
            "LastRefreshErrorAt": sign_in.last_refresh_error_at or "",
        }
        client = self._client()
        try:
            if sign_in.etag is None:
                metadata = client.create_entity(entity)
            else:
                metadata = client.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=sign_in.etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceExistsError, ResourceModifiedError) as error:
            raise TokenStoreConflict("the Partner Center sign-in changed while we refreshed it") from error
        sign_in.etag = metadata.get("etag")
        return sign_in

    def delete(self) -> None:
        self._client().delete_entity(_PARTITION, _ROW)


def utc_now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
