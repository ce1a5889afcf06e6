"""The sync planner: what to write to each side of a linked deal, decided without any I/O.

`plan(...)` takes what both sides say now (neutral views, shared/mapping/views.py), what they said at
the last sync (the link's snapshot) and a few facts about the records, and returns a `SyncPlan`:
the Partner Center patch (fields and status), the CRM write (fields, mirrors, stage), what the
audit says, the sync result shown on the record, and the snapshot to save. The engine
(shared/sync/engine.py) only executes plans through the ports and handles races.

A sync has one round trip in the middle: what the CRM receives is decided from what Partner Center
answered to the patch (its status after an accept, its new ETag). So the plan is made of three
pure steps the engine calls in turn, `plan_partner_center` -> (patch) -> `plan_crm` -> (write) ->
`plan_outcome`; `plan` chains them assuming Partner Center takes the patch as sent, which is what
the table-driven tests (tests/unit/test_plan.py) check each scenario's decision with.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from shared.mapping import status as rules_of_status
from shared.mapping.fields import FieldSpec, View, label, mirror_fields
from shared.mapping.rules import partner_center_problems
from shared.mapping.status import CLOSED, StatusChange
from shared.sync.merge import merge_fields

Direction = Literal["pc->crm", "crm->pc", "both"]


def fingerprint(view: View) -> str:
    """Recognises the CRM record as we left it (our own write coming back through the poll)."""
    return hashlib.sha256(json.dumps(view, sort_keys=True, default=str).encode()).hexdigest()[:24]


def snapshot(pc: View, crm: View, seen: View, **extra: Any) -> dict[str, Any]:
    """`pc` / `crm`: what each side said at this sync (the merge base); `seen`: the CRM record as
    we left it, fingerprinted to recognise our own write when the poll brings it back."""
    return {"pc": pc, "crm": crm, "crm_seen": fingerprint(seen), **extra}


@dataclass(frozen=True)
class Facts:
    """What the plan needs beyond the views."""

    crm_object: Literal["opportunity", "lead"]
    pc_substatus: str | None = None
    pc_modified_at: dt.datetime | None = None
    crm_modified_at: dt.datetime | None = None
    converted_opportunity_id: str | None = None
    """The opportunity a qualified lead became."""
    crm_sync_status: str | None = None
    last_error: str | None = None
    """The link's last recorded error."""
    referral_link: str | None = None
    """The Partner Center deep link (from REFERRAL_LINK_TEMPLATE) the CRM record shows."""
    has_pending_stage: bool = False
    accept_country_names: bool = False


# ---- step 1: what goes to Partner Center -------------------------------------------------------------
@dataclass(frozen=True)
class PartnerCenterPlan:
    to_pc: View
    """Neutral field -> value to patch."""
    status: StatusChange | None
    to_crm: View
    """Partner Center's field changes (and one-way upgrades) to write to the CRM."""
    notes: tuple[str, ...] = ()
    conflicts: bool = False
    error: str | None = None
    """Why nothing is sent to Partner Center (validation, or Partner Center refused)."""
    unsent: frozenset[str] = frozenset()
    """CRM changes not sent now: their merge base stays, so they go later."""
    held: View = field(default_factory=dict)
    """Edits waiting while the referral is pending (remembered to say so once)."""

    @property
    def sends(self) -> bool:
        return bool(self.to_pc or self.status)

    def refused(self, error: str) -> PartnerCenterPlan:
        """Nothing is sent after all: the changes stay unsent (and the status asks again next time)."""
        unsent = set(self.unsent) | set(self.to_pc)
        if self.status is not None:
            unsent |= {"lifecycle", "response"}
        return replace(self, to_pc={}, status=None, error=error, unsent=frozenset(unsent))

    def sent_labels(self) -> list[str]:
        return [label(name) for name in self.to_pc] + ([f"status ({self.status.label})"] if self.status else [])


def plan_partner_center(
    pc: View, crm: View, base_pc: View, base_crm: View, held: View, facts: Facts
) -> PartnerCenterPlan:
    merged = merge_fields(
        pc, crm, base_pc, base_crm, pc_modified_at=facts.pc_modified_at, crm_modified_at=facts.crm_modified_at
    )
    notes = [*merged.notes, *(conflict.describe() for conflict in merged.conflicts)]
    change, status_note = rules_of_status.partner_center_status_change(pc, crm, base_crm)
    if status_note:
        notes.append(status_note)
    plan = PartnerCenterPlan(
        to_pc=dict(merged.to_pc), status=change, to_crm=merged.to_crm, conflicts=bool(merged.conflicts), held=held
    )
    plan = _hold_while_not_open(plan, pc, crm, base_crm, facts, notes)
    plan = replace(plan, notes=tuple(notes))
    if not plan.sends:
        return plan
    projected = {**pc, **plan.to_pc}
    if "currency" not in crm:
        projected.pop("currency", None)  # a single-currency CRM cannot be asked to choose one
    problems = partner_center_problems(projected, accept_country_names=facts.accept_country_names)
    return plan.refused("Not sent to Partner Center: " + "; ".join(problems)) if problems else plan


def _hold_while_not_open(
    plan: PartnerCenterPlan, pc: View, crm: View, base_crm: View, facts: Facts, notes: list[str]
) -> PartnerCenterPlan:
    """A closed referral takes no CRM change; a pending one takes only its status change (edits
    wait, said once, until it is accepted)."""
    state = pc.get("lifecycle")
    if state in CLOSED:
        moved = any(crm.get(name) != base_crm.get(name) for name in ("lifecycle", "response"))
        if plan.to_pc or moved:
            notes.append(f"the referral is closed in Partner Center ({facts.pc_substatus}); CRM changes are not sent")
        return replace(plan, to_pc={}, status=None)
    if state == "pending" and (plan.status is None or plan.status.status == "Closed"):
        if not plan.to_pc:
            return plan
        waiting = {name: crm[name] for name in plan.to_pc}
        if waiting != plan.held:
            names = ", ".join(label(name) for name in plan.to_pc)
            notes.append(f"edits to {names} wait until the referral is accepted (it is pending in Partner Center)")
        return replace(plan, to_pc={}, held=waiting, unsent=plan.unsent | set(plan.to_pc))
    return replace(plan, held={})


# ---- step 2: what goes to the CRM ------------------------------------------------------------------
@dataclass(frozen=True)
class CrmPlan:
    changes: View
    """Neutral fields to write (columns and related rows, as the registry says)."""
    columns: dict[str, Any]
    """Further `RecordUpdate` values: Partner Center's read-only mirrors and the stage."""
    labels: tuple[str, ...]
    """What the audit says was written."""
    follow_opportunity: str | None = None
    """A qualified lead: the link moves to this opportunity instead (SPEC 1.3)."""

    @property
    def writes(self) -> bool:
        return bool(self.changes or self.columns)

    @property
    def written(self) -> frozenset[str]:
        """The view's fields this write sets (the stage moves the status fields)."""
        status = STATUS_FIELDS if "lifecycle" in self.columns else frozenset()
        return frozenset(self.changes) | MIRRORS | status


STATUS_FIELDS = frozenset({"lifecycle", "response"})
"""The view's fields the CRM stage (and a response column) say."""
MIRRORS = frozenset(spec.name for spec in mirror_fields())


def as_written(before: View, after: View, written: frozenset[str]) -> View:
    """The CRM record as we left it: what we read first, with the CRM's own reading of the fields we
    wrote. A field we did not write that reads differently afterwards was changed by someone else
    meanwhile (a seller): it must stay a change to sync, never be absorbed into the merge base."""
    view = {name: value for name, value in before.items() if name not in written}
    view.update({name: value for name, value in after.items() if name in written})
    return view


def mirror_columns(pc: View, crm: View, referral_link: str | None) -> dict[str, Any]:
    """Partner Center -> CRM read-only fields that differ: they simply follow Partner Center."""
    wanted = {**pc, "referral_link": referral_link}
    columns: dict[str, Any] = {}
    for spec in mirror_fields():
        new = wanted.get(spec.name)
        if new and new != crm.get(spec.name) and spec.crm_columns is not None:
            columns.update(spec.crm_columns(new, "opportunity"))
    return columns


def plan_crm(pc_after: View, crm: View, base_pc: View, pc_plan: PartnerCenterPlan, facts: Facts) -> CrmPlan:
    converted = facts.crm_object == "lead" and crm.get("lifecycle") == "qualified" and facts.converted_opportunity_id
    if converted and pc_plan.error is None:
        return CrmPlan(changes={}, columns={}, labels=(), follow_opportunity=facts.converted_opportunity_id)
    columns = mirror_columns(pc_after, crm, facts.referral_link)
    lifecycle = rules_of_status.crm_lifecycle_for(
        pc_after, crm, crm_object=facts.crm_object, has_pending_stage=facts.has_pending_stage
    )
    # Only a status change in Partner Center moves the CRM stage: a referral closed long ago does not
    # re-close a record a seller reopened, and an outgoing (already accepted) referral does not push
    # the seller's early-stage opportunity on.
    if lifecycle is not None and base_pc.get("lifecycle") != pc_after.get("lifecycle"):
        columns["lifecycle"] = lifecycle
    changes = pc_plan.to_crm
    labels = [label(name) for name in changes]
    if "lifecycle" in columns:
        labels.append(label("lifecycle"))
    labels.extend(spec.label for spec in mirror_fields() if spec.label and _column_of(spec) in columns)
    return CrmPlan(changes=changes, columns=columns, labels=tuple(dict.fromkeys(labels)))


def _column_of(spec: FieldSpec) -> str | None:
    """The `RecordUpdate` value a mirror is written to."""
    return next(iter(spec.crm_columns(None, "opportunity")), None) if spec.crm_columns else None


# ---- step 3: what the record, the audit and the link say ---------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    parts: tuple[str, ...]
    """The audit line's parts: what was sent, what was written, notes, the error."""
    sync_result: Literal["Synced", "Error"] | None
    """Shown on the CRM record (status, mark, audit line); None: the record is left alone."""
    audit_outcome: str
    audit_direction: Direction

    @property
    def line(self) -> str:
        return "; ".join(self.parts)


def plan_outcome(pc_plan: PartnerCenterPlan, crm_written: tuple[str, ...], facts: Facts) -> Outcome:
    sent = pc_plan.sent_labels()
    parts: list[str] = []
    if sent:
        parts.append("CRM -> Partner Center: updated " + ", ".join(sent))
    if crm_written:
        parts.append("Partner Center -> CRM: updated " + ", ".join(crm_written))
    parts.extend(pc_plan.notes)
    error = pc_plan.error
    if error:
        parts.append(error)
    repeated_error = error is not None and error == facts.last_error and not (sent or crm_written or pc_plan.notes)
    clears_error = error is None and facts.crm_sync_status == "Error"
    result: Literal["Synced", "Error"] | None = None
    if (parts and not repeated_error) or clears_error:
        result = "Error" if error else "Synced"
    outcome = "error" if error else ("conflict" if pc_plan.conflicts else "synced")
    direction: Direction = "both" if sent and crm_written else ("crm->pc" if sent or error else "pc->crm")
    return Outcome(parts=tuple(parts), sync_result=result, audit_outcome=outcome, audit_direction=direction)


def next_snapshot(pc_after: View, crm_now: View, base_crm: View, pc_plan: PartnerCenterPlan) -> dict[str, Any]:
    """The new merge base: both sides as they are now, except unsent CRM changes, whose base stays."""
    base = dict(crm_now)
    for name in pc_plan.unsent:
        if name in base_crm:
            base[name] = base_crm[name]
        else:
            base.pop(name, None)
    return snapshot(pc_after, base, crm_now, **({"held": pc_plan.held} if pc_plan.held else {}))


# ---- all three, for a Partner Center that takes the patch as sent -------------------------------------------
@dataclass(frozen=True)
class SyncPlan:
    partner_center: PartnerCenterPlan
    crm: CrmPlan
    outcome: Outcome
    snapshot: dict[str, Any]


_AFTER = {"Accepted": "active", "Won": "won", "Lost": "lost", "Declined": "declined"}


def projected_referral(pc: View, pc_plan: PartnerCenterPlan) -> View:
    """Partner Center's view once it took the patch as sent."""
    after = {**pc, **pc_plan.to_pc}
    if pc_plan.status is not None:
        after["lifecycle"] = _AFTER[pc_plan.status.substatus]
        after["status_mirror"] = pc_plan.status.label
    return after


def plan(snapshot_before: dict[str, Any], pc: View, crm: View, facts: Facts) -> SyncPlan:
    """Every decision of one sync of a linked deal. The CRM view after the write is assumed to be
    `crm` with the planned changes applied (the engine re-reads the record instead)."""
    base_pc: View = rules_of_status.normalised(snapshot_before.get("pc") or {})
    base_crm: View = rules_of_status.normalised(snapshot_before.get("crm") or {})
    pc_plan = plan_partner_center(pc, crm, base_pc, base_crm, dict(snapshot_before.get("held") or {}), facts)
    pc_after = projected_referral(pc, pc_plan) if pc_plan.sends else pc
    crm_plan = plan_crm(pc_after, crm, base_pc, pc_plan, facts)
    outcome = plan_outcome(pc_plan, crm_plan.labels if crm_plan.writes else (), facts)
    crm_after = {**crm, **crm_plan.changes}
    if "lifecycle" in crm_plan.columns:
        crm_after["lifecycle"] = crm_plan.columns["lifecycle"]
    return SyncPlan(pc_plan, crm_plan, outcome, next_snapshot(pc_after, crm_after, base_crm, pc_plan))
