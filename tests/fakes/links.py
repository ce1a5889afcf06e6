"""The link store in memory (`LinkStore`), with the table store's ETag rules."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable

from shared.sync.state import AlreadyExistsError, AuditEntry, ConcurrencyConflictError, CrmObject, Link


class FakeLinkStore:
    """`create_link` of a taken id raises `AlreadyExistsError`; `save_link` with a stale ETag raises
    `ConcurrencyConflictError`; both stamp times with the injected clock, as `StateStore` does."""

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self.clock = clock
        self.links: dict[str, Link] = {}
        self.audit: list[AuditEntry] = []
        self._etags = itertools.count(1)
        self.before_save: Callable[[Link], None] | None = None
        """Runs once before the next save (to let 'another worker' save first)."""

    def create_link(self, link: Link) -> Link:
        if link.link_id in self.links:
            raise AlreadyExistsError(f"link {link.link_id} exists already")
        now = self.clock()
        saved = link.model_copy(update={"created_at": now, "updated_at": now, "etag": f"W/{next(self._etags)}"})
        self.links[link.link_id] = saved
        return saved.model_copy()

    def get_link(self, link_id: str) -> Link | None:
        found = self.links.get(link_id)
        return found.model_copy() if found else None

    def save_link(self, link: Link) -> Link:
        if link.etag is None:
            raise ValueError("save_link needs a link read from the store (it has no ETag)")
        if self.before_save is not None:
            hook, self.before_save = self.before_save, None
            hook(link)
        current = self.links.get(link.link_id)
        if current is None or current.etag != link.etag:
            raise ConcurrencyConflictError(f"link {link.link_id} changed since it was read")
        saved = link.model_copy(update={"updated_at": self.clock(), "etag": f"W/{next(self._etags)}"})
        self.links[link.link_id] = saved
        return saved.model_copy()

    def find_link_by_referral(self, referral_id: str) -> Link | None:
        return next((item.model_copy() for item in self.links.values() if item.referral_id == referral_id), None)

    def find_link_by_crm(self, crm_object: CrmObject, crm_id: str) -> Link | None:
        found = (item for item in self.links.values() if (item.crm_object, item.crm_id) == (crm_object, crm_id))
        return next((item.model_copy() for item in found), None)

    def append_audit(self, link_id: str, *, direction: str, outcome: str, message: str) -> AuditEntry:
        entry = AuditEntry(link_id=link_id, time=self.clock(), direction=direction, outcome=outcome, message=message)
        self.audit.append(entry)
        return entry

    def audit_of(self, link_id: str) -> list[str]:
        return [entry.message for entry in self.audit if entry.link_id == link_id]
