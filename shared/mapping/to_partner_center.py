"""Neutral values -> Partner Center wire: the body of a new referral, and JSON Patch operations.

Partner Center accepts only `add` and `replace`, and only on the paths the contract lists
(shared/partner_center/contract.json): one refused path fails the whole PATCH, status included.
So a change to a field Partner Center keeps to itself after creation (the referral name, the
customer, the help asked of Microsoft) is not sent; `patch_operations` returns those fields, for
the caller to say in the audit that Partner Center keeps its own value. JSON Patch `replace`
needs the member to exist: `replace` when it is there, `add` when it is not (never a whole parent,
which would be an unlisted path).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from shared.mapping.countries import CountryError, country_code
from shared.mapping.rules import StatusChange, asks_microsoft_for_help
from shared.mapping.views import View
from shared.model.referral import PatchOperation, Referral
from shared.partner_center.contract import contract

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
    code = country_code(country, accept_names=accept_country_names) if country else None
    address = {
        "addressLine1": customer.get("street"),
        "city": customer.get("city"),
        "state": customer.get("state"),
        # Real payloads carry a US state in `region` (state null): send it in both.
        "region": customer.get("state") if code == "US" else None,
        "postalCode": customer.get("postal_code"),
        "country": code,
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
    """`replace` if the member exists, else `add` (the contract's paths all have their parent)."""
    container: Any = document
    for key in path[:-1]:
        container = container.get(key) if isinstance(container, dict) else None
    op = "replace" if isinstance(container, dict) and path[-1] in container else "add"
    return PatchOperation(op=op, path=_pointer(path), value=value)


def _pointer(path: tuple[str, ...]) -> str:
    return "/" + "/".join(path)


_ADDRESS_PARTS = ("addressLine1", "city", "state", "region", "postalCode", "country")
_CUSTOMER_PATHS = (("customerProfile", "name"), *(("customerProfile", "address", part) for part in _ADDRESS_PARTS))


def _customer_paths(customer: dict[str, Any], *, accept_country_names: bool) -> list[tuple[tuple[str, ...], Any]]:
    """The customer's name and each address part, as separate paths: only the contract decides
    which of them Partner Center takes after creation (today none)."""
    try:
        address = _address(customer, accept_country_names=accept_country_names)
    except CountryError:  # the engine's checks report the country in plain words; never sent as is
        address = _address({**customer, "country": None}, accept_country_names=accept_country_names)
    paths: list[tuple[tuple[str, ...], Any]] = [(("customerProfile", "name"), customer.get("name"))]
    paths += [(("customerProfile", "address", key), value) for key, value in address.items()]
    return paths


def patch_operations(
    referral: Referral,
    changes: View,
    status: StatusChange | None,
    *,
    accept_country_names: bool,
) -> tuple[list[PatchOperation], list[str]]:
    """JSON Patch carrying `changes` (neutral field -> new value) and the status change, on the
    contract's patchable paths only; and the neutral fields left out because Partner Center does
    not accept them by PATCH (it keeps its own value)."""
    terms = contract()
    document = referral.model_dump(mode="json", by_alias=True, exclude_unset=True)  # the members on the wire
    wanted: list[tuple[str, tuple[str, ...], Any]] = []
    for field, value in changes.items():
        if field == "customer":
            if not any(terms.is_patchable(_pointer(path)) for path in _CUSTOMER_PATHS):
                wanted.append((field, _CUSTOMER_PATHS[0], None))  # none of it is patchable: refused whole
                continue
            profile = referral.customer_profile
            old = {"name": profile.name if profile else None}
            old |= profile.address.to_wire() if profile and profile.address else {}
            for path, part in _customer_paths(value or {}, accept_country_names=accept_country_names):
                if old.get(path[-1]) != part:  # only the parts that changed: region and addressLine2 stay
                    wanted.append((field, path, part))
            continue
        wanted.append((field, PATHS[field], wire_value(field, value, accept_country_names=accept_country_names)))
        if (
            field == "help_needed"
            and asks_microsoft_for_help({"help_needed": value})
            and "visible" not in changes
            and terms.is_patchable(_pointer(PATHS[field]))
        ):
            # Asking Microsoft for help makes it a co-sell, which is shared with Microsoft sellers.
            wanted.append(("visible", PATHS["visible"], True))
    if status is not None:
        wanted.append(("status", ("status",), status.status))
        wanted.append(("status", ("substatus",), status.substatus))
        if status.reason:
            wanted.append(("status", ("statusReason",), status.reason))
    refused = {field for field, path, _ in wanted if not terms.is_patchable(_pointer(path))}
    # A customer is several paths: its patchable parts go. Any other field is one path.
    operations = [_op(document, path, value) for _, path, value in wanted if terms.is_patchable(_pointer(path))]
    return operations, [field for field in changes if field in refused]


def new_referral(view: View, *, crm_record_id: str, accept_country_names: bool) -> dict[str, Any]:
    """The `POST /referrals` body for a CRM deal a seller chose to sync (reference 1.3, 1.5).

    Co-sell (help asked) and partner-led (visible) deals are shared with Microsoft sellers; a
    private deal is not. Partner Center answers with the stored referral (Active/Accepted, Outgoing).
    """
    customer = view.get("customer") or {}
    co_sell = asks_microsoft_for_help(view)
    shared = co_sell or bool(view.get("visible"))
    terms = contract()
    details: dict[str, Any] = {
        "requirements": {
            "solutions": wire_value("solutions", view.get("solutions"), accept_country_names=False),
            # Mandatory since 2026-01-05; the CRMs do not ask the seller, so "have not decided".
            "additionalRequirements": {"attributes": [terms.marketplace_intent()]},
        }
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
        "consent": terms.consent_on_create(shared=shared),
        "details": details,
        "team": wire_value("team", view.get("team"), accept_country_names=False),
    }
    if co_sell:
        body["inviteContext"] = {"assistanceRequestCode": view["help_needed"]}
    return body
