"""A Partner Center Referrals API in memory (`PartnerCenterPort`)."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from shared.model.referral import PatchOperation, Referral
from shared.partner_center.client import (
    PartnerCenterConflictError,
    PartnerCenterNotFoundError,
    PartnerCenterValidationError,
)
from shared.partner_center.contract import contract


def _wire_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakePartnerCenter:
    """Referrals as wire JSON. Each write stamps `updatedDateTime` and a new `eTag`; a patch with a
    stale `If-Match` ETag raises `PartnerCenterConflictError` (412); an unknown id raises
    `PartnerCenterNotFoundError` (404); `refuse_next(...)` makes the next write fail validation (400)."""

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self.clock = clock
        self.referrals: dict[str, dict[str, Any]] = {}
        self.patches: list[tuple[str, list[dict[str, Any]]]] = []
        self.posts: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._etags = itertools.count(1)
        self._refusal: str | None = None
        self.before_patch: Callable[[str], None] | None = None
        """Runs before a patch is applied (to let 'someone else' change the referral first)."""

    # ---- test controls ----------------------------------------------------------------------------
    def add(self, document: dict[str, Any]) -> Referral:
        """A referral that exists in Partner Center (an incoming one from Microsoft, say)."""
        stored = copy.deepcopy(document)
        stored.setdefault("id", f"ref-{next(self._ids)}")
        stored.setdefault("engagementId", f"eng-{stored['id']}")
        self._stamp(stored)
        self.referrals[stored["id"]] = stored
        return Referral.model_validate(stored)

    def edit(self, referral_id: str, **members: Any) -> Referral:
        """Someone changes the referral in Partner Center (top-level or dotted `details.notes` members)."""
        stored = self.referrals[referral_id]
        for dotted, value in members.items():
            target = stored
            *parents, last = dotted.split(".")
            for key in parents:
                target = target.setdefault(key, {})
            target[last] = value
        self._stamp(stored)
        return Referral.model_validate(stored)

    def refuse_next(self, message: str) -> None:
        self._refusal = message

    # ---- the port ----------------------------------------------------------------------------------
    def get_referral(self, referral_id: str) -> Referral:
        return Referral.model_validate(self._stored(referral_id))

    def related_referrals(self, referral: Referral) -> list[Referral]:
        return [
            Referral.model_validate(item)
            for item in self.referrals.values()
            if item["engagementId"] == referral.engagement_id
        ]

    def referrals_updated_since(self, moment: dt.datetime) -> Iterable[Referral]:
        found = [Referral.model_validate(item) for item in self.referrals.values()]
        return sorted(
            (item for item in found if item.updated_date_time and item.updated_date_time >= moment),
            key=lambda item: item.updated_date_time or moment,
        )

    def create_referral(self, referral: Referral | dict[str, Any]) -> Referral:
        body = referral.to_wire() if isinstance(referral, Referral) else copy.deepcopy(referral)
        self._refuse_if_asked()
        self.posts.append(copy.deepcopy(body))
        body.update(status="Active", substatus="Accepted", direction="Outgoing", organizationId="partner")
        return self.add(body)

    def update_referral(
        self,
        referral_id: str,
        operations: Sequence[PatchOperation | dict[str, Any]],
        *,
        etag: str | None = None,
        return_representation: bool = True,
    ) -> Referral | None:
        if not operations:
            raise ValueError("a referral update needs at least one JSON Patch operation")
        if self.before_patch is not None:
            hook, self.before_patch = self.before_patch, None
            hook(referral_id)
        stored = self._stored(referral_id)
        if stored.get("status") == "Closed":
            raise PartnerCenterValidationError(f"referral {referral_id} is closed", status=400)
        if etag is not None and etag != stored["eTag"]:
            raise PartnerCenterConflictError(f"referral {referral_id} changed (412)", status=412)
        self._refuse_if_asked()
        body = [
            (item if isinstance(item, PatchOperation) else PatchOperation.model_validate(item)).model_dump(mode="json")
            for item in operations
        ]
        unlisted = [operation["path"] for operation in body if not contract().is_patchable(operation["path"])]
        if unlisted:  # as the real API (and the simulator): one unlisted path refuses the whole PATCH
            raise PartnerCenterValidationError(f"the path {unlisted[0]} is not supported", status=400)
        for operation in body:
            _apply(stored, operation)
        self.patches.append((referral_id, body))
        self._stamp(stored)
        return Referral.model_validate(stored) if return_representation else None

    # ---- inside -------------------------------------------------------------------------------------
    def _stored(self, referral_id: str) -> dict[str, Any]:
        if referral_id not in self.referrals:
            raise PartnerCenterNotFoundError(f"referral {referral_id} not found", status=404)
        return self.referrals[referral_id]

    def _stamp(self, stored: dict[str, Any]) -> None:
        stored["updatedDateTime"] = _wire_time(self.clock())
        stored["eTag"] = f'"{next(self._etags)}"'

    def _refuse_if_asked(self) -> None:
        if self._refusal is not None:
            message, self._refusal = self._refusal, None
            raise PartnerCenterValidationError(message, status=400)


def _apply(document: dict[str, Any], operation: dict[str, Any]) -> None:
    """JSON Patch `add` / `replace` (RFC 6902): `replace` needs the member, `add` its parent."""
    *parents, last = operation["path"].strip("/").split("/")
    target: Any = document
    for key in parents:
        if not isinstance(target, dict) or key not in target:
            raise PartnerCenterValidationError(f"path {operation['path']} does not exist", status=400)
        target = target[key]
    if operation["op"] == "replace" and last not in target:
        raise PartnerCenterValidationError(f"cannot replace missing member {operation['path']}", status=400)
    target[last] = copy.deepcopy(operation["value"])
