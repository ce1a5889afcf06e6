"""Neutral values -> Partner Center wire: the body of a new referral, and JSON Patch operations.

Partner Center accepts only `add` and `replace` (reference 0, 1.1). JSON Patch `replace` needs
the member to exist, so each operation is built against the referral as last read: `replace` when
the member is there, `add` when only its parent is, and an `add` of the whole parent otherwise.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from shared.mapping.countries import country_code
from shared.mapping.rules import StatusChange, asks_microsoft_for_help
from shared.mapping.views import View
from shared.model.referral import PatchOperation, Referral

PATHS = {
    "name": ("name",),
    "deal_value": ("details", "dealValue"),
    "currency": ("details", "currency"),
    "close_date": ("details", "closingDateTime"),
    "notes": ("details", "notes"),
    "contacts": ("customerProfile", "team"),
    "solutions": ("details", "requirements", "solutions"),
    "help_needed": ("inviteContext", "assistanceRequestCode"),
    "visible": ("consent", "consentToShareReferralWithMicrosoftSellers"),
    "team": ("team",),
}


def _member(contact: dict[str, Any]) -> dict[str, Any]:
    member = {
        "firstName": contact.get("first_name"),
        "lastName": contact.get("last_name"),
        "email": contact.get("email"),
        "phoneNumber": contact.get("phone"),
        "title": contact.get("title"),
    }
    return {key: value for key, value in member.items() if value is not None}


def _solution(solution: dict[str, Any]) -> dict[str, Any]:
    item = {
        "id": solution["id"],
        "name": solution.get("name"),
        "publisherName": solution.get("publisher"),
        "solutionType": solution.get("type"),
    }
    return {key: value for key, value in item.items() if value is not None}


def _address(customer: dict[str, Any], *, accept_country_names: bool) -> dict[str, Any]:
    country = customer.get("country")
    address = {
        "addressLine1": customer.get("street"),
        "city": customer.get("city"),
        "state": customer.get("state"),
        "postalCode": customer.get("postal_code"),
        "country": country_code(country, accept_names=accept_country_names) if country else None,
    }
    return {key: value for key, value in address.items() if value is not None}


def wire_value(field: str, value: Any, *, accept_country_names: bool) -> Any:
    """The Partner Center JSON for one neutral field value."""
    if field == "deal_value":
        return float(Decimal(value)) if value is not None else None
    if field == "close_date":
        return f"{value}T00:00:00Z" if value else None
    if field in ("contacts", "team"):
        return [_member(contact) for contact in value or []]
    if field == "solutions":
        return [_solution(solution) for solution in value or []]
    if field == "visible":
        return bool(value)
    return value


def _op(document: dict[str, Any], path: tuple[str, ...], value: Any) -> PatchOperation:
    """`replace` if the member exists, `add` if its parent does, else `add` the missing parent."""
    container: Any = document
    for depth, key in enumerate(path[:-1]):
        child = container.get(key) if isinstance(container, dict) else None
        if not isinstance(child, dict):
            wrapped: Any = value
            for inner in reversed(path[depth + 1 :]):
                wrapped = {inner: wrapped}
            return PatchOperation(op="add", path="/" + "/".join(path[: depth + 1]), value=wrapped)
        container = child
    op = "replace" if path[-1] in container else "add"
    return PatchOperation(op=op, path="/" + "/".join(path), value=value)


def patch_operations(
    referral: Referral,
    changes: View,
    status: StatusChange | None,
    *,
    accept_country_names: bool,
) -> list[PatchOperation]:
    """JSON Patch carrying exactly `changes` (neutral field -> new value) and the status change."""
    document = referral.model_dump(mode="json", by_alias=True, exclude_unset=True)  # the members on the wire
    operations: list[PatchOperation] = []
    for field, value in changes.items():
        if field == "customer":
            customer = value or {}
            operations.append(_op(document, ("customerProfile", "name"), customer.get("name")))
            operations.append(
                _op(
                    document,
                    ("customerProfile", "address"),
                    _address(customer, accept_country_names=accept_country_names),
                )
            )
            continue
        operations.append(
            _op(document, PATHS[field], wire_value(field, value, accept_country_names=accept_country_names))
        )
        if field == "help_needed" and asks_microsoft_for_help({"help_needed": value}) and "visible" not in changes:
            # Asking Microsoft for help makes it a co-sell, which is shared with Microsoft sellers.
            operations.append(_op(document, PATHS["visible"], True))
    if status is not None:
        operations.append(_op(document, ("status",), status.status))
        operations.append(_op(document, ("substatus",), status.substatus))
        if status.reason:
            operations.append(_op(document, ("statusReason",), status.reason))
    return operations


def new_referral(view: View, *, crm_record_id: str, accept_country_names: bool) -> dict[str, Any]:
    """The `POST /referrals` body for a CRM deal a seller chose to sync (reference 1.3, 1.5).

    Co-sell (help asked) and partner-led (visible) deals are shared with Microsoft sellers; a
    private deal is not. Partner Center answers with the stored referral (Active/Accepted, Outgoing).
    """
    customer = view.get("customer") or {}
    co_sell = asks_microsoft_for_help(view)
    shared = co_sell or bool(view.get("visible"))
    details: dict[str, Any] = {
        "requirements": {"solutions": wire_value("solutions", view.get("solutions"), accept_country_names=False)}
    }
    for field, key in (
        ("deal_value", "dealValue"),
        ("currency", "currency"),
        ("close_date", "closingDateTime"),
        ("notes", "notes"),
    ):
        if view.get(field) is not None:
            details[key] = wire_value(field, view[field], accept_country_names=False)
    body: dict[str, Any] = {
        "name": view.get("name"),
        "externalReferenceId": crm_record_id,
        "type": "Shared" if shared else "Independent",
        "qualification": "SalesQualified",
        "customerProfile": {
            "name": customer.get("name"),
            "address": _address(customer, accept_country_names=accept_country_names),
            "team": wire_value("contacts", view.get("contacts"), accept_country_names=False),
        },
        "consent": {"consentToShareReferralWithMicrosoftSellers": shared},
        "details": details,
        "team": wire_value("team", view.get("team"), accept_country_names=False),
    }
    if co_sell:
        body["inviteContext"] = {"assistanceRequestCode": view["help_needed"]}
    return body
