"""Composition root: builds the app's collaborators once, on first use, never at import.

v2 indexing imports function_app.py (and so this module) on every cold start, so nothing here
reads settings, opens a connection or imports a heavy SDK until a trigger actually asks.
Tests build their own objects from `Settings` instead of going through these process-wide ones.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import TYPE_CHECKING, Any

from shared import telemetry
from shared.admin.health import DetailSection
from shared.crm.port import CrmPort
from shared.settings import Settings, get_settings, reset_settings_cache
from shared.sync.queues import QueueProducer
from shared.sync.state import DeadLetter, StateStore
from shared.sync.storage import StorageAccount

if TYPE_CHECKING:
    from shared.admin.alerts import RunResult
    from shared.admin.page import PageRequest, PageResponse
    from shared.admin.status import RecentValue, StatusSnapshot
    from shared.model.referral import Referral
    from shared.partner_center.auth import PartnerCenterAuth
    from shared.partner_center.client import PartnerCenterClient
    from shared.partner_center.webhook import SignatureVerifier
    from shared.sync.engine import SyncEngine


def settings() -> Settings:
    telemetry.instrument_http_clients()  # before the first API client is built; once per process
    return get_settings()


@functools.cache
def storage() -> StorageAccount:
    return StorageAccount.from_settings(settings())


def clock() -> dt.datetime:
    """The one clock of the engine and the state store (tests inject their own into both)."""
    return dt.datetime.now(dt.UTC)


@functools.cache
def state_store() -> StateStore:
    return StateStore(storage(), clock=clock)


@functools.cache
def queue_producer() -> QueueProducer:
    return QueueProducer(storage())


@functools.cache
def partner_center_auth() -> PartnerCenterAuth:
    """The stored Partner Center sign-in (delegated tokens for both Partner Center APIs)."""
    from shared.partner_center.auth import PartnerCenterAuth

    return PartnerCenterAuth.from_settings(settings())


@functools.cache
def webhook_verifier() -> SignatureVerifier:
    """Checks Partner Center webhook signatures; keeps its certificate cache for the process."""
    from shared.partner_center.webhook import SignatureVerifier

    return SignatureVerifier.from_settings(settings())


@functools.cache
def crm() -> CrmPort:
    """The CRM adapter CRM_KIND names (imported here, so neither SDK loads at cold start)."""
    current = settings()
    if current.crm_kind == "dynamics":
        from shared.crm.dynamics import DynamicsCrm

        return DynamicsCrm(current)
    from shared.crm.salesforce import SalesforceAdapter

    return SalesforceAdapter(current)


@functools.cache
def partner_center() -> PartnerCenterClient:
    """The Referrals API client, signed in with the stored delegated token."""
    from shared.partner_center.client import PartnerCenterClient

    auth = partner_center_auth()  # issue 12: a refusal for lack of MFA shows on the health page
    return PartnerCenterClient.from_settings(settings(), auth.token, on_mfa_required=auth.record_mfa_refusal)


@functools.cache
def sync_engine() -> SyncEngine:
    from shared.sync.engine import SyncEngine

    return SyncEngine(settings=settings(), state=state_store(), partner_center=partner_center(), crm=crm(), clock=clock)


@functools.cache
def inbound_referrals() -> RecentValue[list[Referral]]:
    """Partner Center's inbound referrals waiting for an answer, read at most once a minute."""
    from shared.admin import status

    return status.RecentValue(
        lambda: list(partner_center().list_referrals(filter=status.INBOUND_WAITING_FILTER)), status.INBOUND_MAX_AGE
    )


def status_snapshot(current: Settings, query: str | None = None) -> StatusSnapshot:
    """Everything the status page shows (and the alerts judge), read now."""
    from shared.admin import status

    return status.gather(
        current,
        state_store(),
        queue_producer(),
        pc_sign_in=lambda: partner_center_auth().health_summary(),
        inbound_referrals=inbound_referrals().get,
        query=query,
    )


def status_page(request: PageRequest) -> PageResponse:
    from shared.admin import page
    from shared.sync.failures import replay_dead_letter

    return page.handle(
        request,
        load_settings=settings,
        snapshot=status_snapshot,
        replay=lambda letter_id: replay_dead_letter(state_store(), queue_producer(), letter_id),
        find_letter=_find_dead_letter,
    )


def _find_dead_letter(letter_id: str) -> DeadLetter | None:
    try:
        return state_store().get_dead_letter(letter_id)
    except ValueError:  # not even a valid id
        return None


ACTIVITY_KEPT = dt.timedelta(days=2)
"""Activity rows older than this are pruned by the alerts timer (the page shows 24 hours)."""


def send_alerts() -> RunResult:
    from shared.admin import alert_channels, alerts

    current = settings()
    state_store().prune_activity(dt.datetime.now(dt.UTC) - ACTIVITY_KEPT)
    return alerts.run(
        current, status_snapshot(current), alerts.AlertLedger(storage()), alert_channels.AlertChannels(current)
    )


def reset() -> None:
    """Forget everything built so far (after the environment changed: local host reloads, tests)."""
    reset_settings_cache()
    for cached in (
        storage,
        state_store,
        queue_producer,
        partner_center_auth,
        webhook_verifier,
        crm,
        partner_center,
        sync_engine,
        inbound_referrals,
    ):
        cached.cache_clear()


def _partner_center_sign_in(settings: Settings) -> tuple[str, dict[str, Any], bool]:
    """The stored Partner Center sign-in: who, when the refresh token was last used, last error."""
    summary = partner_center_auth().health_summary()
    return "partner_center", summary, bool(summary.get("healthy"))


def health_sections() -> tuple[DetailSection, ...]:
    """Extra sections of the health report, beyond settings, storage, queues and dead letters."""
    return (_partner_center_sign_in,)
