"""What a sync would do, asked of the sync engine's own pieces without running it (no I/O here).

This is the backfill's one adapter to the engine's decision logic: the neutral views
(shared/mapping/views.py), the per-field merge (shared/sync/merge.py) and the mapping rules. The
engine is being redesigned (a pure planner, a field registry); when it lands, `preview_sync` is
the one function to point at the planner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.crm.port import CrmCapabilities, CrmRecord
from shared.mapping import rules
from shared.mapping.fields import FIELDS, ReadContext, View, label, mirror_fields
from shared.mapping.status import partner_center_status_change
from shared.mapping.views import crm_view, referral_view, same_value
from shared.model.referral import Referral
from shared.settings import Settings
from shared.sync.merge import merge_fields
from shared.sync.queues import CrmChange, PartnerCenterChange
from shared.sync.state import Link

TWO_WAY_FIELDS = tuple(spec.name for spec in FIELDS if spec.direction == "both")
CRM_TO_PC_FIELDS = tuple(spec.name for spec in FIELDS if spec.direction == "crm_to_pc")
TO_CRM = "Partner Center -> CRM"
TO_PC = "CRM -> Partner Center"
NOTHING_STORED_DIFFERENTLY = "nothing: neither side changed it since the last sync (the two store it differently)"
CLOSED_STATES = ("won", "lost", "declined", "expired")
# Read-only CRM fields that simply follow Partner Center (the engine writes them with every sync).
MIRRORED_FIELDS = {spec.name: spec.label or spec.name.replace("_", " ") for spec in mirror_fields()}
# The engine only looks at a pair when one side changed; a mirror alone does not make it look.
MIRRORED = f"{TO_CRM} with the next sync of this pair"


@dataclass(frozen=True)
class FieldDifference:
    field: str
    label: str
    pc_value: str
    crm_value: str
    action: str


@dataclass(frozen=True)
class Preview:
    """One sentence on what a sync would do, the fields that differ, and the message that makes the
    engine look (None: a sync would change nothing, so none is queued)."""

    action: str
    message: PartnerCenterChange | CrmChange | None
    differences: list[FieldDifference] = field(default_factory=list)


def shown(value: Any) -> str:
    """A neutral value in plain words for the report."""
    if value is None or value == "" or value == []:
        return "(empty)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(str(item) for item in value.values() if item) or "(empty)"
    if isinstance(value, list):
        return "; ".join(
            str(item.get("email") or item.get("id") or item.get("last_name") or item)
            if isinstance(item, dict)
            else str(item)
            for item in value
        )
    return str(value)


def _context(settings: Settings, capabilities: CrmCapabilities) -> ReadContext:
    return ReadContext(
        accept_country_names=settings.accept_country_names,
        pending_stage=capabilities.pending_stage,
        lead_has_name=capabilities.lead_has_name,
        referral_link_template=settings.pc_referral_link_template,
    )


def _views(
    settings: Settings, capabilities: CrmCapabilities, referral: Referral, record: CrmRecord
) -> tuple[View, View]:
    context = _context(settings, capabilities)
    return referral_view(referral, context), crm_view(record, context)


def preview_sync(
    settings: Settings,
    capabilities: CrmCapabilities,
    *,
    referral: Referral | None,
    record: CrmRecord | None,
    link: Link | None,
    referral_missing: bool = False,
    record_missing: bool = False,
) -> Preview:
    """What a sync of this referral / CRM record / link would do now.

    `referral_missing` / `record_missing`: that side is named (by the link or the record) but does
    not exist any more."""
    if referral_missing or record_missing:
        return _orphan(link, record, referral_missing=referral_missing)
    if referral is not None and record is None:
        return _new_in_crm(settings, referral)
    if record is not None and referral is None:
        return _new_in_partner_center(settings, capabilities, record, link)
    assert referral is not None and record is not None
    if link is None or link.crm_id is None:
        return _adoption(settings, capabilities, referral, record)
    return _linked(settings, capabilities, referral, record, link)


def _new_in_crm(settings: Settings, referral: Referral) -> Preview:
    assert referral.id is not None
    kind = rules.crm_object_for(referral)
    if kind == "lead" and settings.sync_cosell_only:
        return Preview("nothing: lead referrals are not synced (SYNC_COSELL_ONLY=true)", None)
    if referral.is_closed:
        return Preview(f"nothing: closed in Partner Center ({referral.substatus}) before it was ever synced", None)
    return Preview(f"create a CRM {kind}", PartnerCenterChange(referral_id=referral.id, event="backfill"))


def _new_in_partner_center(
    settings: Settings, capabilities: CrmCapabilities, record: CrmRecord, link: Link | None
) -> Preview:
    ref = record.ref
    if link is not None and link.last_error:
        return Preview(f"nothing: already marked Error ({link.last_error})", None)
    if ref.kind == "lead":
        return Preview("nothing: leads are not created in Partner Center (only opportunities are)", None)
    view = crm_view(record, _context(settings, capabilities))
    message = CrmChange(object=ref.kind, record_id=ref.id)
    problems = rules.partner_center_problems(view, accept_country_names=settings.accept_country_names)
    if problems:
        return Preview("mark the record Error: not sent to Partner Center: " + "; ".join(problems), message)
    return Preview("create a Partner Center referral", message)


def _orphan(link: Link | None, record: CrmRecord | None, *, referral_missing: bool) -> Preview:
    if link is not None and link.last_error:
        return Preview(f"nothing: already marked Error ({link.last_error})", None)
    if referral_missing and link is None and record is not None:
        # The engine refuses such a record once, on the record itself (Sync status Error + audit).
        return Preview(
            "mark the record Error: the referral it names does not exist in Partner Center",
            CrmChange(object=record.ref.kind, record_id=record.ref.id),
        )
    if referral_missing:
        return Preview(
            "nothing a sync can fix: the referral no longer exists in Partner Center (or this sign-in cannot "
            "see it); clear the record's referral id or turn its Sync off",
            None,
        )
    return Preview(
        "nothing a sync can fix: the CRM record no longer exists; the referral stays in Partner Center", None
    )


def _differences(pc: View, crm: View, actions: dict[str, str]) -> list[FieldDifference]:
    found: list[FieldDifference] = []
    for name in (*TWO_WAY_FIELDS, *CRM_TO_PC_FIELDS):
        if name in actions:
            pass
        elif name in CRM_TO_PC_FIELDS:
            continue  # the partner team only ever goes CRM -> Partner Center, when the CRM owner changes
        elif name not in pc or name not in crm or same_value(name, pc[name], crm[name]):
            continue
        action = actions.get(name, NOTHING_STORED_DIFFERENTLY)
        found.append(FieldDifference(name, label(name), shown(pc.get(name)), shown(crm.get(name)), action))
    for name, mirror_label in MIRRORED_FIELDS.items():
        if pc.get(name) and pc.get(name) != crm.get(name):
            found.append(FieldDifference(name, mirror_label, shown(pc.get(name)), shown(crm.get(name)), MIRRORED))
    return found


def _adoption(settings: Settings, capabilities: CrmCapabilities, referral: Referral, record: CrmRecord) -> Preview:
    """The record names the referral but we have no link (state lost, or made by Microsoft's
    connector): the engine links them as they are, so differing values stay until one side changes."""
    pc, crm = _views(settings, capabilities, referral, record)
    kept = "nothing: adopted as it is (the next edit on either side syncs)"
    differences = [
        item
        if item.action != NOTHING_STORED_DIFFERENTLY
        else FieldDifference(item.field, item.label, item.pc_value, item.crm_value, kept)
        for item in _differences(pc, crm, {})
    ]
    return Preview(
        "link the two (adopt) and mirror Partner Center's status",
        CrmChange(object=record.ref.kind, record_id=record.ref.id),
        differences,
    )


def _linked(
    settings: Settings, capabilities: CrmCapabilities, referral: Referral, record: CrmRecord, link: Link
) -> Preview:
    assert referral.id is not None
    pc, crm = _views(settings, capabilities, referral, record)
    base_pc: View = link.snapshot.get("pc") or {}
    base_crm: View = link.snapshot.get("crm") or {}
    merged = merge_fields(
        pc,
        crm,
        base_pc,
        base_crm,
        pc_modified_at=referral.updated_date_time,
        crm_modified_at=record.modified_at,
    )
    closed = pc.get("lifecycle") in CLOSED_STATES
    pending = pc.get("lifecycle") == "pending"
    actions: dict[str, str] = {name: TO_CRM for name in merged.to_crm}
    for name in merged.to_pc:
        if closed:
            actions[name] = f"nothing: the referral is closed in Partner Center ({referral.substatus})"
        elif pending:
            actions[name] = f"{TO_PC} once the referral is accepted (it is pending in Partner Center)"
        else:
            actions[name] = TO_PC
    for conflict in merged.conflicts:
        kept = "Partner Center" if conflict.winner == "pc" else "CRM"
        actions[conflict.field] = f"conflict: both changed; keeps the {kept} value (changed later)"
    differences = _differences(pc, crm, actions)
    status, _ = partner_center_status_change(pc, crm, base_crm)
    if status is not None and not closed:
        differences.append(
            FieldDifference(
                "status",
                "status",
                shown(pc.get("status_mirror")),
                shown(crm.get("lifecycle")),
                f"{TO_PC}: {status.label}",
            )
        )
    moving = [item for item in differences if not item.action.startswith("nothing") and item.action != MIRRORED]
    if not moving:
        return Preview(
            "nothing: in sync" if not differences else "nothing: the differences are not changes", None, differences
        )
    # The engine only looks at a side that changed since the last sync: Partner Center's ETag, or the
    # fingerprint of the CRM record. A Partner Center message reads and merges both sides.
    message: PartnerCenterChange | CrmChange
    if referral.e_tag != link.pc_etag:
        message = PartnerCenterChange(referral_id=referral.id, event="backfill")
    else:
        message = CrmChange(object=record.ref.kind, record_id=record.ref.id)
    directions = sorted({item.action.split(":")[0].split(" once")[0] for item in moving})
    return Preview("sync the differences (" + "; ".join(directions) + ")", message, differences)
