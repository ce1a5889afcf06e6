"""Compare Partner Center with the CRM and our links: reads only, never a write anywhere.

Scope: every referral and every CRM record with Sync = Yes (optionally only those changed since a
moment), or only the referrals and records named on the command line. Each referral is paired
with its CRM record through our links (or the referral id the record carries), and each pair is
handed to `preview_sync` to say what a sync would do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.backfill.preview import FieldDifference, Preview, preview_sync
from shared.crm.port import CrmNotFoundError, CrmPort, CrmRecord, CrmRef, CrmValidationError
from shared.mapping.fields import MICROSOFT_ORGANIZATION_ID
from shared.model.referral import Referral
from shared.partner_center.client import PartnerCenterClient, PartnerCenterNotFoundError
from shared.settings import Settings
from shared.sync.queues import CrmChange, PartnerCenterChange
from shared.sync.state import Link, StateStore

Category = Literal[
    "referral without CRM record",
    "CRM record without referral",
    "not linked yet",
    "fields differ",
    "orphan",
]
CATEGORIES: tuple[Category, ...] = (
    "referral without CRM record",
    "CRM record without referral",
    "not linked yet",
    "fields differ",
    "orphan",
)


class UnknownIdsError(Exception):
    """Ids named on the command line that Partner Center or the CRM does not have."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Scope:
    """What to compare: everything, everything changed since `since`, or the named ids only."""

    since: dt.datetime | None = None
    referral_ids: tuple[str, ...] = ()
    crm_refs: tuple[CrmRef, ...] = ()

    @property
    def named(self) -> bool:
        return bool(self.referral_ids or self.crm_refs)

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "referral_ids": list(self.referral_ids),
            "crm_refs": [f"{ref.kind}:{ref.id}" for ref in self.crm_refs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scope:
        refs = []
        for text in data.get("crm_refs") or []:
            kind, _, record_id = str(text).partition(":")
            refs.append(CrmRef.model_validate({"kind": kind, "id": record_id}))
        since = data.get("since")
        return cls(
            since=dt.datetime.fromisoformat(since) if since else None,
            referral_ids=tuple(data.get("referral_ids") or ()),
            crm_refs=tuple(refs),
        )

    def describe(self) -> str:
        parts = [f"changed since {self.since:%Y-%m-%d %H:%M} UTC"] if self.since else []
        parts += [f"referral {item}" for item in self.referral_ids]
        parts += [f"{ref.kind} {ref.id}" for ref in self.crm_refs]
        return ", ".join(parts) or "everything"


@dataclass(frozen=True)
class Finding:
    category: Category
    referral_id: str | None
    crm: CrmRef | None
    name: str | None
    action: str
    message: PartnerCenterChange | CrmChange | None
    differences: list[FieldDifference] = field(default_factory=list)

    @property
    def crm_label(self) -> str:
        return f"{self.crm.kind} {self.crm.id}" if self.crm else "-"


@dataclass
class Comparison:
    scope: Scope
    findings: list[Finding]
    referrals_read: int
    records_read: int
    in_sync: int

    @property
    def to_queue(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.message is not None]


Progress = Callable[[str], None]


class _Compare:
    def __init__(
        self, settings: Settings, pc: PartnerCenterClient, crm: CrmPort, state: StateStore, progress: Progress
    ) -> None:
        self.settings = settings
        self.pc = pc
        self.crm = crm
        self.state = state
        self.progress = progress
        self.referrals: dict[str, Referral | None] = {}  # None: does not exist
        self.records: dict[CrmRef, CrmRecord | None] = {}
        self.listed: list[CrmRecord] = []  # the CRM records in scope
        self.findings: list[Finding] = []
        self.in_sync = 0
        self.done_links: set[str] = set()
        self.done_referrals: set[str] = set()
        self.done_records: set[CrmRef] = set()

    # ---- reading (cached, so each side is read once) ------------------------------------------------
    def referral(self, referral_id: str) -> Referral | None:
        if referral_id not in self.referrals:
            try:
                self.referrals[referral_id] = self.pc.get_referral(referral_id)
            except PartnerCenterNotFoundError:
                self.referrals[referral_id] = None
        return self.referrals[referral_id]

    def record(self, ref: CrmRef) -> CrmRecord | None:
        if ref not in self.records:
            try:
                self.records[ref] = self.crm.read(ref)
            except CrmNotFoundError:
                self.records[ref] = None
        return self.records[ref]

    def load_named(self, scope: Scope) -> None:
        problems: list[str] = []
        for referral_id in scope.referral_ids:
            try:
                found = self.referral(referral_id)
            except ValueError as error:  # not even a valid id (a / or a space in it)
                problems.append(str(error))
                continue
            if found is None:
                problems.append(
                    f"referral {referral_id} does not exist in Partner Center (or this sign-in cannot see it)"
                )
            elif found.organization_id == MICROSOFT_ORGANIZATION_ID:
                problems.append(
                    f"referral {referral_id} is Microsoft's own referral of engagement {found.engagement_id}; "
                    "name the partner's referral of that engagement"
                )
        for ref in scope.crm_refs:
            try:
                record = self.record(ref)
            except CrmValidationError as error:  # an id the CRM cannot even look up (not an id of its kind)
                problems.append(f"CRM {ref.kind} {ref.id} is not a valid id: {error}")
                continue
            if record is None:
                problems.append(f"CRM {ref.kind} {ref.id} does not exist")
            else:
                self.listed.append(record)
        if problems:
            raise UnknownIdsError(problems)

    def load_everything(self, since: dt.datetime | None) -> None:
        self.progress("reading Partner Center referrals")
        listing: Iterable[Referral] = (
            self.pc.referrals_updated_since(since) if since else self.pc.list_referrals(orderby="updatedDateTime asc")
        )
        for referral in listing:
            # Microsoft's own referral of an engagement is not ours to sync (the engine follows it to ours).
            if referral.id and referral.organization_id != MICROSOFT_ORGANIZATION_ID:
                self.referrals[referral.id] = referral
        self.progress(f"{len(self.referrals)} referrals; reading CRM records with Sync = Yes")
        # `changed_since` takes a whole second; a CRM read through a change feed (Dataverse change
        # tracking) ignores it and returns the whole set, so records are filtered by their stamp below.
        start = since.replace(microsecond=0) if since else None
        refs = list(dict.fromkeys(change.ref for change in self.crm.changed_since(start).changes))
        for index, ref in enumerate(refs, start=1):
            record = self.record(ref)
            if record is not None and (
                since is None or (record.modified_at is not None and record.modified_at >= since)
            ):
                self.listed.append(record)
            if index % 25 == 0:
                self.progress(f"read {index} of {len(refs)} CRM records")

    # ---- pairing --------------------------------------------------------------------------------------
    def add(
        self, category: Category, preview: Preview, referral_id: str | None, crm: CrmRef | None, name: str | None
    ) -> None:
        if preview.message is None and not preview.differences and category == "fields differ":
            self.in_sync += 1
            return
        self.findings.append(
            Finding(category, referral_id, crm, name, preview.action, preview.message, preview.differences)
        )

    def consider_referral(self, referral: Referral, carried_by: dict[str, CrmRecord]) -> None:
        assert referral.id is not None
        self.done_referrals.add(referral.id)
        link = self.state.find_link_by_referral(referral.id)
        if link is not None:
            self.done_links.add(link.link_id)
        if link is not None and link.crm_object and link.crm_id:
            ref = CrmRef(kind=link.crm_object, id=link.crm_id)
            self.done_records.add(ref)
            record = self.record(ref)
            if record is None:
                preview = preview_sync(
                    self.settings, self.crm.capabilities, referral=referral, record=None, link=link, record_missing=True
                )
                self.add("orphan", preview, referral.id, ref, referral.name)
                return
            preview = preview_sync(self.settings, self.crm.capabilities, referral=referral, record=record, link=link)
            self.add("fields differ", preview, referral.id, ref, record.name)
            return
        record = carried_by.get(referral.id)
        if record is not None:
            self.done_records.add(record.ref)
            preview = preview_sync(self.settings, self.crm.capabilities, referral=referral, record=record, link=None)
            self.add("not linked yet", preview, referral.id, record.ref, record.name)
            return
        preview = preview_sync(self.settings, self.crm.capabilities, referral=referral, record=None, link=link)
        self.add("referral without CRM record", preview, referral.id, None, referral.name)

    def consider_record(self, record: CrmRecord) -> None:
        ref = record.ref
        self.done_records.add(ref)
        link = self.state.find_link_by_crm(ref.kind, ref.id)
        if link is not None:
            self.done_links.add(link.link_id)
        referral_id = (link.referral_id if link is not None else None) or record.connector.referral_id
        if referral_id and not (link is not None and link.state == "creating"):
            self.done_referrals.add(referral_id)
            referral = self.referral(referral_id)
            if referral is None:
                preview = preview_sync(
                    self.settings, self.crm.capabilities, referral=None, record=record, link=link, referral_missing=True
                )
                self.add("orphan", preview, referral_id, ref, record.name)
                return
            category: Category = "fields differ" if link is not None and link.crm_id else "not linked yet"
            preview = preview_sync(self.settings, self.crm.capabilities, referral=referral, record=record, link=link)
            self.add(category, preview, referral_id, ref, record.name)
            return
        preview = preview_sync(self.settings, self.crm.capabilities, referral=None, record=record, link=link)
        self.add("CRM record without referral", preview, None, ref, record.name)

    def consider_link(self, link: Link) -> None:
        """A link neither listing brought up: check that both its sides still exist."""
        if link.state == "creating" and not link.referral_id:
            return  # a create in progress; the CRM poll finishes it
        referral = self.referral(link.referral_id) if link.referral_id else None
        ref = CrmRef(kind=link.crm_object, id=link.crm_id) if link.crm_object and link.crm_id else None
        record = self.record(ref) if ref else None
        name = (record.name if record else None) or (referral.name if referral else None)
        if (link.referral_id and referral is None) or (ref and record is None):
            preview = preview_sync(
                self.settings,
                self.crm.capabilities,
                referral=referral,
                record=record,
                link=link,
                referral_missing=bool(link.referral_id and referral is None),
                record_missing=bool(ref and record is None),
            )
            self.add("orphan", preview, link.referral_id, ref, name)
        elif referral is not None and record is not None:
            preview = preview_sync(self.settings, self.crm.capabilities, referral=referral, record=record, link=link)
            self.add("fields differ", preview, link.referral_id, ref, name)


def compare(
    settings: Settings,
    pc: PartnerCenterClient,
    crm: CrmPort,
    state: StateStore,
    scope: Scope,
    *,
    progress: Progress = lambda _text: None,
) -> Comparison:
    """Everything that differs in `scope`, and what a sync of each would do. Writes nothing.

    Raises `UnknownIdsError` (before anything else is read) for named ids that do not exist."""
    run = _Compare(settings, pc, crm, state, progress)
    if scope.named:
        run.load_named(scope)
    else:
        run.load_everything(scope.since)
    records = run.listed
    carried_by = {record.connector.referral_id: record for record in records if record.connector.referral_id}
    for referral in [item for item in run.referrals.values() if item is not None]:
        run.consider_referral(referral, carried_by)
    for record in records:
        if record.ref not in run.done_records:
            run.consider_record(record)
    if not scope.named:
        progress("checking links")
        for link in state.list_links():
            if link.link_id in run.done_links or (scope.since and link.updated_at < scope.since):
                continue
            run.consider_link(link)
    order = {category: index for index, category in enumerate(CATEGORIES)}
    run.findings.sort(key=lambda item: (order[item.category], item.referral_id or "", item.crm_label))
    return Comparison(
        scope=scope,
        findings=run.findings,
        referrals_read=sum(1 for item in run.referrals.values() if item is not None),
        records_read=len(records),
        in_sync=run.in_sync,
    )
