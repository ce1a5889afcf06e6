"""Neutral views: what a referral and a CRM record each say about a deal, in the same words.

Both sides are reduced to one flat JSON-able mapping of the neutral fields of the registry
(shared/mapping/fields.py), so the engine can compare each side with what it said at the last sync
(the snapshot in `links`) and with the other side, field by field. A key that is absent means
"this side has no opinion" (e.g. a Salesforce org without multi-currency has no currency), never
"cleared".

Values are normalised so that the same fact compares equal on both sides: decimals as plain
strings, dates as ISO dates, emails lower-cased, lists in a stable order.
"""

from __future__ import annotations

from typing import Any

from shared.crm.port import CrmRecord
from shared.mapping.fields import ABSENT, BY_NAME, FIELDS, ReadContext, View
from shared.model.referral import Referral

__all__ = ["View", "ReadContext", "referral_view", "crm_view", "same_value"]


def referral_view(referral: Referral, context: ReadContext | None = None) -> View:
    """What Partner Center says. `context.related` is Microsoft's referral of the same engagement,
    when an event about it brought us here: its `trackingInfo.microsoftMsxId` fills the Microsoft CRM id."""
    context = context or ReadContext()
    values = ((spec.name, spec.read_pc(referral, context)) for spec in FIELDS)
    return {name: value for name, value in values if value is not ABSENT}


def crm_view(record: CrmRecord, context: ReadContext) -> View:
    """What the CRM says, in the same neutral fields as `referral_view`."""
    values = ((spec.name, spec.read_crm(record, context)) for spec in FIELDS)
    return {name: value for name, value in values if value is not ABSENT}


def same_value(field: str, pc_value: Any, crm_value: Any) -> bool:
    """Do both sides already say the same thing about `field` (so nothing needs writing)?

    Lenient where the two systems legitimately store the same fact differently: contacts and
    solutions are compared by identity (email, solution id), customers case-insensitively.
    """
    return BY_NAME[field].same(pc_value, crm_value)
