"""The per-field three-way merge (SPEC 2): pure, no I/O.

Each side is compared with what *that side* said at the last sync (`base_pc`, `base_crm`), not
with the other side, so a value one system stores differently from the other (a customer address
the CRM account keeps its own way, a name the CRM truncates) is never mistaken for an edit, and
our own writes coming back are no change at all.

Per field:
- neither side changed -> nothing;
- one side changed -> its value goes to the other side (unless both already agree);
- both changed to different values -> a conflict: the side whose own modification time is later
  wins, a tie goes to Partner Center, and the conflict is reported so the audit can name both values.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.mapping.fields import FieldSpec, View, label, merged_fields

Side = Literal["pc", "crm"]


@dataclass(frozen=True)
class Conflict:
    field: str
    pc_value: Any
    crm_value: Any
    winner: Side

    def describe(self) -> str:
        kept = "Partner Center" if self.winner == "pc" else "CRM"
        return (
            f"conflict on {label(self.field)}: Partner Center {_shown(self.pc_value)} vs CRM "
            f"{_shown(self.crm_value)}; kept the {kept} value (changed later, ties go to Partner Center)"
        )


@dataclass
class FieldMerge:
    to_crm: View = field(default_factory=dict)
    to_pc: View = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(item.get("id") or item.get("email") or item) for item in value) + "]"
    if isinstance(value, dict):
        return "'" + ", ".join(str(item) for item in value.values() if item) + "'"
    return f"'{value}'" if value is not None else "(empty)"


def _changed(view: View, base: View, name: str) -> bool:
    """A field changed on one side: it has a value now and a different one at the last sync.
    A field the base never held (an older snapshot) counts as unchanged."""
    return name in view and name in base and view[name] != base[name]


def merge_fields(
    pc: View,
    crm: View,
    base_pc: View,
    base_crm: View,
    *,
    pc_modified_at: dt.datetime | None,
    crm_modified_at: dt.datetime | None,
) -> FieldMerge:
    result = FieldMerge()
    for spec in merged_fields():
        name = spec.name
        pc_changed = spec.direction == "both" and _changed(pc, base_pc, name)
        crm_changed = _changed(crm, base_crm, name)
        if not (pc_changed or crm_changed):
            continue
        if name in pc and name in crm and spec.same(pc[name], crm[name]):
            continue
        winner: Side = "pc" if pc_changed else "crm"
        if pc_changed and crm_changed:
            crm_later = pc_modified_at is not None and crm_modified_at is not None and crm_modified_at > pc_modified_at
            winner = "crm" if crm_later else "pc"
            result.conflicts.append(Conflict(name, pc.get(name), crm.get(name), winner))
        if winner == "pc":
            if name in crm:  # a CRM without the field (single-currency org) cannot take it
                result.to_crm[name] = pc[name]
            continue
        refusal = _one_way_refusal(spec, pc, crm)
        if refusal:
            result.notes.append(refusal)
            result.to_crm[name] = pc[name]  # put the CRM back to what Partner Center keeps
            continue
        result.to_pc[name] = crm[name]
    return result


def _one_way_refusal(spec: FieldSpec, pc: View, crm: View) -> str | None:
    """Partner Center upgrades that cannot be undone (reference 1.5): visibility and co-sell."""
    if spec.keep_one_way is None:
        return None
    return spec.keep_one_way(pc.get(spec.name), crm.get(spec.name))
