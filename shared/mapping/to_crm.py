"""Neutral values -> CRM-neutral write requests (shared/crm/port.py), for both adapters."""

from __future__ import annotations

from typing import Any

from shared.crm.port import CrmAccount, CrmContact, CrmObjectKind, CrmSolution, RecordUpdate
from shared.mapping.fields import BY_NAME, View


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


def record_update(changes: View, *, crm_object: CrmObjectKind, **extra: Any) -> RecordUpdate:
    """A `RecordUpdate` with the record's own columns for `changes` (each field's registry entry
    says which), plus `extra` RecordUpdate fields (connector fields, lifecycle, account id).
    Related rows (account, contacts, solutions) are written by the engine through the port."""
    values: dict[str, Any] = {}
    for name, value in changes.items():
        columns = BY_NAME[name].crm_columns
        if columns is not None:
            values.update(columns(value, crm_object))
    values.update(extra)
    return RecordUpdate(**values)
