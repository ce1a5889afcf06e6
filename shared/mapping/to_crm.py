"""Neutral values -> CRM-neutral write requests (shared/crm/port.py), for both adapters."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from shared.crm.port import CrmAccount, CrmContact, CrmObjectKind, CrmSolution, Lifecycle, RecordUpdate
from shared.mapping.views import View

SCALAR_FIELDS = ("name", "deal_value", "currency", "close_date", "notes", "help_needed", "visible")
"""Neutral fields written as plain values of the opportunity / lead itself."""


def crm_account(customer: dict[str, Any]) -> CrmAccount:
    return CrmAccount(
        name=customer.get("name") or "(no name)",
        street=customer.get("street"),
        city=customer.get("city"),
        state=customer.get("state"),
        postal_code=customer.get("postal_code"),
        country=customer.get("country"),
    )


def crm_contacts(contacts: list[dict[str, Any]] | None) -> list[CrmContact]:
    return [
        CrmContact(
            first_name=contact.get("first_name"),
            last_name=contact.get("last_name") or contact.get("email") or "(unknown)",
            email=contact.get("email"),
            phone=contact.get("phone"),
            title=contact.get("title"),
        )
        for contact in contacts or []
    ]


def crm_solutions(solutions: list[dict[str, Any]] | None) -> list[CrmSolution]:
    return [
        CrmSolution(
            solution_id=str(solution["id"]),
            name=solution.get("name"),
            publisher=solution.get("publisher"),
            solution_type=solution.get("type"),
        )
        for solution in solutions or []
    ]


def _scalar(field: str, value: Any) -> Any:
    if field == "deal_value":
        return Decimal(value) if value is not None else None
    if field == "close_date":
        return dt.date.fromisoformat(value) if value else None
    if field == "visible":
        return bool(value)
    return value


def record_update(changes: View, *, crm_object: CrmObjectKind, **extra: Any) -> RecordUpdate:
    """A `RecordUpdate` with the scalar `changes` (and the lead's own company / contact columns),
    plus `extra` RecordUpdate fields (connector fields, lifecycle, account id)."""
    values: dict[str, Any] = {}
    names = {"help_needed": "help_needed", "visible": "visible_to_microsoft"}
    for field in SCALAR_FIELDS:
        if field in changes:
            values[names.get(field, field)] = _scalar(field, changes[field])
    if crm_object == "lead":
        values.pop("close_date", None)  # a lead has no close date
        if "customer" in changes:
            customer = changes["customer"] or {}
            values.update(
                lead_company=customer.get("name"),
                lead_street=customer.get("street"),
                lead_city=customer.get("city"),
                lead_state=customer.get("state"),
                lead_postal_code=customer.get("postal_code"),
                lead_country=customer.get("country"),
            )
        if "contacts" in changes:
            first = (changes["contacts"] or [{}])[0] if changes["contacts"] else {}
            values.update(
                lead_first_name=first.get("first_name"),
                lead_last_name=first.get("last_name") or first.get("email") or "(unknown)",
                lead_email=first.get("email"),
                lead_phone=first.get("phone"),
            )
    values.update(extra)
    return RecordUpdate(**values)


def creation_lifecycle(pc_state: str) -> Lifecycle:
    """Stage of a CRM record created for a referral: unaccepted ones wait in the pending stage."""
    if pc_state == "pending":
        return "pending"
    if pc_state == "won":
        return "won"
    return "active" if pc_state == "active" else "lost"
