"""Clients for the storage account that holds our tables and queues.

Locally (Azurite) and with a connection string: the SDKs' `from_connection_string`. In Azure:
identity-based access with the app's managed identity (no keys exist on the account). SDK imports
happen here, on first use, so importing the package stays cheap for cold starts.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from shared.settings import Settings


class StorageAccount:
    """Builds table and queue clients for one account, from settings."""

    def __init__(
        self,
        *,
        connection_string: str | None = None,
        table_uri: str | None = None,
        queue_uri: str | None = None,
        managed_identity_client_id: str | None = None,
        retry_total: int = 3,
        connection_timeout: float = 10,
        read_timeout: float = 30,
    ) -> None:
        if connection_string is None and not (table_uri and queue_uri):
            raise ValueError("a storage connection string or both service URIs are required")
        self._connection_string = connection_string
        self._table_uri = table_uri
        self._queue_uri = queue_uri
        self._client_id = managed_identity_client_id
        self._credential: Any = None
        # Bounded retries and timeouts: the SDK default (10 retries, long back-off) would hold a
        # trigger for minutes on an outage; the queue's own retry is the better place to wait.
        self._client_options: dict[str, Any] = {
            "retry_total": retry_total,
            "connection_timeout": connection_timeout,
            "read_timeout": read_timeout,
        }
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, *, fail_fast: bool = False) -> StorageAccount:
        """Clients for the configured account; `fail_fast` (health checks) retries nothing."""
        return cls(
            connection_string=settings.storage_connection_string(),
            table_uri=settings.storage_table_uri,
            queue_uri=settings.storage_queue_uri,
            managed_identity_client_id=settings.storage_client_id,
            retry_total=0 if fail_fast else 3,
            connection_timeout=3 if fail_fast else 10,
            read_timeout=5 if fail_fast else 30,
        )

    def _identity(self) -> Any:
        with self._lock:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                self._credential = DefaultAzureCredential(managed_identity_client_id=self._client_id)
            return self._credential

    def table_client(self, table: str) -> Any:
        from azure.data.tables import TableClient

        if self._connection_string:
            return TableClient.from_connection_string(self._connection_string, table_name=table, **self._client_options)
        return TableClient(
            endpoint=str(self._table_uri), table_name=table, credential=self._identity(), **self._client_options
        )

    def queue_client(self, queue: str) -> Any:
        from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

        # Base64 on the wire, as the Functions queue trigger expects (host.json messageEncoding).
        policies = {
            "message_encode_policy": TextBase64EncodePolicy(),
            "message_decode_policy": TextBase64DecodePolicy(),
            **self._client_options,
        }
        if self._connection_string:
            return QueueClient.from_connection_string(self._connection_string, queue, **policies)
        return QueueClient(account_url=str(self._queue_uri), queue_name=queue, credential=self._identity(), **policies)

    @staticmethod
    def ensure_table(client: Any) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):  # already there: the normal case
            client.create_table()

    @staticmethod
    def ensure_queue(client: Any) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):  # already there: the normal case
            client.create_queue()
