"""What the sync engine needs from Partner Center and from its own link store, as Protocols.

The engine (shared/sync/engine.py) names only these and `CrmPort` (shared/crm/port.py):
production passes `PartnerCenterClient` and `StateStore`; the fast tests pass the in-memory fakes
of tests/fakes/, which keep the same contracts (ETags, 412 conflicts, not-found).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from shared.model.referral import PatchOperation, Referral
from shared.sync.state import AuditEntry, CrmObject, Link


class PartnerCenterPort(Protocol):
    """The Referrals API calls the engine makes. Errors are those of shared/partner_center/client.py:
    `PartnerCenterNotFoundError`, `PartnerCenterConflictError` (412, stale ETag),
    `PartnerCenterValidationError` (refused data)."""

    def get_referral(self, referral_id: str) -> Referral: ...

    def related_referrals(self, referral: Referral) -> list[Referral]:
        """Every referral of `referral`'s engagement (ours, Microsoft's, other partners'); the client
        follows the referral's own `links.relatedReferrals.uri` (issue 12)."""
        ...

    def referrals_updated_since(self, moment: dt.datetime) -> Iterable[Referral]:
        """Referrals changed at or after `moment`, oldest change first."""
        ...

    def create_referral(self, referral: Referral | dict[str, Any]) -> Referral: ...

    def update_referral(
        self,
        referral_id: str,
        operations: Sequence[PatchOperation | dict[str, Any]],
        *,
        etag: str | None = None,
        return_representation: bool = True,
    ) -> Referral | None:
        """JSON Patch; with `etag`, a concurrent change raises `PartnerCenterConflictError`."""
        ...


class LinkStore(Protocol):
    """Links and their audit trail (shared/sync/state.py). Every save is conditional on the row's
    ETag (`ConcurrencyConflictError` when stale); creating an existing id raises `AlreadyExistsError`."""

    def create_link(self, link: Link) -> Link: ...

    def get_link(self, link_id: str) -> Link | None: ...

    def save_link(self, link: Link) -> Link: ...

    def find_link_by_referral(self, referral_id: str) -> Link | None: ...

    def find_link_by_crm(self, crm_object: CrmObject, crm_id: str) -> Link | None: ...

    def append_audit(self, link_id: str, *, direction: str, outcome: str, message: str) -> AuditEntry: ...
