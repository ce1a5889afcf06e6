"""The health report behind `GET /api/health` (public) and `GET /api/health/details` (function key).

The public answer says only ok/degraded and the version: enough for an uptime probe, nothing for
an attacker. The detailed one says why: settings problems, storage reachability, queue depths,
dead letters, and the Partner Center sign-in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared import __version__
from shared.settings import Settings, SettingsError, get_settings
from shared.sync.errors import NEEDS_ADMIN
from shared.sync.queues import SYNC_POISON_QUEUE, SYNC_QUEUE, QueueProducer
from shared.sync.state import StateStore
from shared.sync.storage import StorageAccount

# Extra sections of the detailed report (e.g. the Partner Center sign-in). Each returns
# (section name, JSON body, healthy?) and must not raise for an unhealthy dependency.
DetailSection = Callable[[Settings], tuple[str, dict[str, Any], bool]]


@dataclass
class HealthReport:
    healthy: bool
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "ok" if self.healthy else "degraded"

    @property
    def http_status(self) -> int:
        return 200 if self.healthy else 503

    def public_body(self) -> dict[str, Any]:
        return {"status": self.status, "version": __version__}

    def detailed_body(self) -> dict[str, Any]:
        return {**self.public_body(), **self.details}


def _storage_section(settings: Settings) -> tuple[dict[str, Any], bool]:
    storage = StorageAccount.from_settings(settings, fail_fast=True)
    try:
        producer = QueueProducer(storage)
        depths = {SYNC_QUEUE: producer.depth(SYNC_QUEUE), SYNC_POISON_QUEUE: producer.depth(SYNC_POISON_QUEUE)}
        state = StateStore(storage)
        dead_letters = state.count_dead_letters()
        needs_admin = [
            {"time": letter.time.isoformat(), "reason": letter.reason}
            for letter in state.list_dead_letters(limit=50)
            if letter.replayed_at is None and letter.reason.startswith(NEEDS_ADMIN)
        ]
    except Exception as error:  # reported, not raised: this is the health check
        return {"storage": {"reachable": False, "error": f"{type(error).__name__}: {error}"}}, False
    details = {"storage": {"reachable": True}, "queues": depths, "dead_letters": dead_letters}
    # Messages an admin must act on (a revoked sign-in, a missing permission): degraded until replayed.
    return {**details, "needs_admin": needs_admin[:5]}, not needs_admin


def check_health(
    *,
    detailed: bool,
    load_settings: Callable[[], Settings] = get_settings,
    sections: tuple[DetailSection, ...] = (),
) -> HealthReport:
    """Run every check; `detailed` only decides how much the caller may see, so the public
    'ok' and the detailed 'ok' always agree."""
    try:
        settings = load_settings()
    except SettingsError as error:
        return HealthReport(False, {"settings": {"valid": False, "problems": error.problems}} if detailed else {})
    details: dict[str, Any] = {"settings": {"valid": True, "problems": []}, "crm": settings.crm_kind}
    storage_details, healthy = _storage_section(settings)
    details.update(storage_details)
    for section in sections:
        name, body, section_healthy = section(settings)
        details[name] = body
        healthy = healthy and section_healthy
    return HealthReport(healthy, details if detailed else {})
