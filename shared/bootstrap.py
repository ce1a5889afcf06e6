"""Composition root: builds the app's collaborators once, on first use, never at import.

v2 indexing imports function_app.py (and so this module) on every cold start, so nothing here
reads settings, opens a connection or imports a heavy SDK until a trigger actually asks.
Tests build their own objects from `Settings` instead of going through these process-wide ones.
"""

from __future__ import annotations

import functools

from shared.admin.health import DetailSection
from shared.settings import Settings, get_settings, reset_settings_cache
from shared.sync.queues import QueueProducer
from shared.sync.state import StateStore
from shared.sync.storage import StorageAccount


def settings() -> Settings:
    return get_settings()


@functools.cache
def storage() -> StorageAccount:
    return StorageAccount.from_settings(settings())


@functools.cache
def state_store() -> StateStore:
    return StateStore(storage())


@functools.cache
def queue_producer() -> QueueProducer:
    return QueueProducer(storage())


def reset() -> None:
    """Forget everything built so far (after the environment changed: local host reloads, tests)."""
    reset_settings_cache()
    for cached in (storage, state_store, queue_producer):
        cached.cache_clear()


def health_sections() -> tuple[DetailSection, ...]:
    """Extra sections of the health report, beyond settings, storage, queues and dead letters."""
    return ()
