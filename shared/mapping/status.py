"""Where a deal stands, and how a status change on one side becomes one on the other: one table each.

One vocabulary for both sides (the `lifecycle` field of the views):
- `pending`: Partner Center New (not yet accepted); a CRM record in its pending stage;
- `active`: Partner Center Active; an open CRM opportunity or lead;
- `won`, `lost`: closed; Partner Center adds `declined` and `expired`;
- `qualified`, `disqualified`: a CRM lead converted or disqualified.

Rules are first-match tables, read top to bottom (reference 1.4 transitions, SPEC 1.2, 1.3).
Decisions are made from the current state of both sides, so a lost or repeated message changes
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from shared.crm.port import CrmObjectKind, Lifecycle

View = dict[str, Any]

CLOSED = frozenset({"won", "lost", "declined", "expired"})
"""Partner Center states after which CRM changes are no longer sent."""

_OLD_NAMES = {"open": "active"}
"""Snapshots saved before the one vocabulary said "open" for an open CRM record."""


def normalised(view: View) -> View:
    """A stored view in today's vocabulary."""
    lifecycle = view.get("lifecycle")
    if lifecycle in _OLD_NAMES:
        return {**view, "lifecycle": _OLD_NAMES[lifecycle]}
    return view


class StatusChange(BaseModel):
    """A Partner Center status change (reference 1.4 transitions)."""

    model_config = ConfigDict(frozen=True)

    status: Literal["Active", "Closed"]
    substatus: Literal["Accepted", "Won", "Lost", "Declined"]
    reason: str | None = None

    @property
    def label(self) -> str:
        return f"{self.status} / {self.substatus}"


ACCEPT = StatusChange(status="Active", substatus="Accepted")
WIN = StatusChange(status="Closed", substatus="Won")


# ---- CRM -> Partner Center ----------------------------------------------------------------------
@dataclass(frozen=True)
class _CrmAsks:
    """The CRM side of a rule: its lifecycle now, its referral response, its lifecycle at the last sync."""

    lifecycle: Any
    response: Any
    base_lifecycle: Any
    base_response: Any


@dataclass(frozen=True)
class Transition:
    pc: str
    """Partner Center's lifecycle the rule applies to."""
    when: Callable[[_CrmAsks], bool]
    change: Literal["Accepted", "Won", "Lost", "Declined"] | None
    default_reason: str | None = None
    """Status reason when the seller gave none (declines need one)."""
    note: str | None = None
    """Why the request cannot be honoured (audit), for rules that change nothing."""


CRM_TO_PC: tuple[Transition, ...] = (
    Transition("pending", lambda crm: crm.response == "Decline", "Declined", "Declined in the CRM"),
    Transition("pending", lambda crm: crm.lifecycle == "lost", "Declined", "Closed as lost in the CRM"),
    Transition("pending", lambda crm: crm.lifecycle == "disqualified", "Declined", "Disqualified in the CRM"),
    Transition("pending", lambda crm: crm.lifecycle == "won", "Won"),
    Transition("pending", lambda crm: crm.response == "Accept" or crm.lifecycle == "qualified", "Accepted"),
    # the seller moved the opportunity out of the pending stage (CRMs with one)
    Transition("pending", lambda crm: crm.lifecycle == "active" and crm.base_lifecycle == "pending", "Accepted"),
    Transition("active", lambda crm: crm.lifecycle == "won", "Won"),
    Transition("active", lambda crm: crm.lifecycle == "lost", "Lost"),
    Transition("active", lambda crm: crm.lifecycle == "disqualified", "Declined", "Disqualified in the CRM"),
    Transition(
        "active",
        lambda crm: crm.response == "Decline" and crm.base_response != "Decline",
        None,
        note="the referral is already accepted, so it cannot be declined; close the opportunity as lost instead",
    ),
)


def partner_center_status_change(pc: View, crm: View, base_crm: View) -> tuple[StatusChange | None, str | None]:
    """What the CRM's stage / response asks of an open Partner Center referral, and why (for the audit).

    Returns (change, note); `note` explains a request that cannot be honoured.
    """
    asks = _CrmAsks(crm.get("lifecycle"), crm.get("response"), base_crm.get("lifecycle"), base_crm.get("response"))
    for rule in CRM_TO_PC:
        if rule.pc == pc.get("lifecycle") and rule.when(asks):
            return _change(rule, crm.get("decline_reason")), rule.note
    return None, None


def _change(rule: Transition, reason: str | None) -> StatusChange | None:
    if rule.change is None:
        return None
    if rule.change == "Accepted":
        return ACCEPT
    if rule.change == "Won":
        return WIN
    return StatusChange(status="Closed", substatus=rule.change, reason=reason or rule.default_reason)


# ---- Partner Center -> CRM ----------------------------------------------------------------------
@dataclass(frozen=True)
class CrmMove:
    pc: frozenset[str]
    """Partner Center lifecycles the rule applies to."""
    target: Lifecycle
    unless: frozenset[str] = frozenset()
    """CRM lifecycles that already agree."""
    only_from: frozenset[str] | None = None
    """CRM lifecycles the move starts from (None: any)."""
    leads: bool = True
    """False: never done to a lead (converting one is a seller's decision in the CRM)."""
    needs_pending_stage: bool = False


PC_TO_CRM: tuple[CrmMove, ...] = (
    CrmMove(frozenset({"won"}), "won", unless=frozenset({"won", "qualified"}), leads=False),
    CrmMove(frozenset({"lost", "declined", "expired"}), "lost", unless=frozenset({"lost", "disqualified"})),
    # accepted in Partner Center: a record waiting in the CRM's pending stage moves on
    CrmMove(frozenset({"active"}), "active", only_from=frozenset({"pending"}), needs_pending_stage=True),
)


def crm_lifecycle_for(pc: View, crm: View, *, crm_object: CrmObjectKind, has_pending_stage: bool) -> Lifecycle | None:
    """The CRM stage / state Partner Center's status asks for, or None when the CRM already agrees."""
    move = next((move for move in PC_TO_CRM if pc.get("lifecycle") in move.pc), None)
    if move is None:
        return None
    now = crm.get("lifecycle")
    if now in move.unless or (move.only_from is not None and now not in move.only_from):
        return None
    if (crm_object == "lead" and not move.leads) or (move.needs_pending_stage and not has_pending_stage):
        return None
    return move.target


CREATION: dict[str, Lifecycle] = {"pending": "pending", "active": "active", "won": "won"}
"""Stage of a CRM record created for a referral: unaccepted ones wait in the pending stage; any
other closed state is created lost."""


def creation_lifecycle(pc_state: str) -> Lifecycle:
    return CREATION.get(pc_state, "lost")
