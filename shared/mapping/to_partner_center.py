"""Neutral values -> Partner Center wire: the body of a new referral, and JSON Patch operations.

Partner Center accepts only `add` and `replace`, and only on the paths the contract lists
(shared/partner_center/contract.json): one refused path fails the whole PATCH, status included.
So a change to a field Partner Center keeps to itself after creation (the referral name, the
customer, the help asked of Microsoft) is not sent; `patch_operations` returns those fields, for
the caller to say in the audit that Partner Center keeps its own value. JSON Patch `replace`
needs the member to exist: `replace` when it is there, `add` when it is not (never a whole parent,
which would be an unlisted path). Where each field goes on the wire is the field registry's word
(shared/mapping/fields.py).
"""

from __future__ import annotations

from typing import Any

from shared.mapping.countries import CountryError
from shared.mapping.fields import (
    BY_NAME,
    FIELDS,
    View,
    asks_microsoft_for_help,
)
from shared.mapping.status import StatusChange
from shared.model.referral import PatchOperation, Referral
from shared.partner_center.contract import contract

Path = tuple[str, ...]

_ADDRESS = ("customerProfile", "address")
_ADDRESS_PARTS = ("addressLine1", "city", "state", "region", "postalCode", "country")
_CUSTOMER_PATHS: tuple[Path, ...] = (("customerProfile", "name"), *((*_ADDRESS, part) for part in _ADDRESS_PARTS))


def field_patches(field: str, value: Any, *, accept_country_names: bool) -> list[tuple[Path, Any]]:
    """(JSON Patch path, wire value) pairs carrying one neutral field's new value (the registry says where)."""
    spec = BY_NAME[field]
    if spec.patch_values is not None:
        return spec.patch_values(value, accept_country_names)
    if spec.pc_path is None:
        raise ValueError(f"the field {field!r} is never written to Partner Center")
    return [(spec.pc_path, spec.to_wire(value))]


def _pointer(path: Path) -> str:
    return "/" + "/".join(path)


def _op(document: dict[str, Any], path: Path, value: Any) -> PatchOperation:
    """`replace` if the member exists, else `add` (the contract's paths all have their parent)."""
    container: Any = document
    for key in path[:-1]:
        container = container.get(key) if isinstance(container, dict) else None
    op = "replace" if isinstance(container, dict) and path[-1] in container else "add"
    return PatchOperation(op=op, path=_pointer(path), value=value)


def _customer_patches(referral: Referral, value: Any, *, accept_country_names: bool) -> list[tuple[Path, Any]]:
    """The customer's name and each address part that changed, as separate paths: only the
    contract decides which of them Partner Center takes after creation (today none of them)."""
    if not any(contract().is_patchable(_pointer(path)) for path in _CUSTOMER_PATHS):
        return [(_CUSTOMER_PATHS[0], None)]  # refused whole, without reading the new value
    try:
        pairs = field_patches("customer", value, accept_country_names=accept_country_names)
    except CountryError:  # the engine's checks report the country in plain words; never sent as is
        pairs = field_patches("customer", {**(value or {}), "country": None}, accept_country_names=accept_country_names)
    parts: list[tuple[Path, Any]] = []
    for path, wire in pairs:
        if path == _ADDRESS and isinstance(wire, dict):
            parts += [((*_ADDRESS, key), part) for key, part in wire.items()]
        else:
            parts.append((path, wire))
    profile = referral.customer_profile
    old: dict[str, Any] = {"name": profile.name if profile else None}
    old |= profile.address.to_wire() if profile and profile.address else {}
    # Only the parts that changed: region and addressLine2 stay as Partner Center has them.
    return [(path, wire) for path, wire in parts if old.get(path[-1]) != wire]


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
    wanted: list[tuple[str, Path, Any]] = []
    for field, value in changes.items():
        if field == "customer":
            pairs = _customer_patches(referral, value, accept_country_names=accept_country_names)
        else:
            pairs = field_patches(field, value, accept_country_names=accept_country_names)
        wanted += [(field, path, wire) for path, wire in pairs]
        help_path = BY_NAME["help_needed"].pc_path
        if (
            field == "help_needed"
            and asks_microsoft_for_help({"help_needed": value})
            and "visible" not in changes
            and help_path is not None
            and terms.is_patchable(_pointer(help_path))
        ):
            # Asking Microsoft for help makes it a co-sell, which is shared with Microsoft sellers.
            wanted += [
                ("visible", path, wire)
                for path, wire in field_patches("visible", True, accept_country_names=accept_country_names)
            ]
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
    private deal is not. It carries the contract's consent flags and the customer's marketplace
    intent (mandatory since 2026-01-05; the CRMs do not ask the seller, so "have not decided").
    Partner Center answers with the stored referral (Active/Accepted, Outgoing).
    """
    terms = contract()
    co_sell = asks_microsoft_for_help(view)
    shared = co_sell or bool(view.get("visible"))
    body: dict[str, Any] = {
        "externalReferenceId": crm_record_id,
        "type": "Shared" if shared else "Independent",
        "qualification": "SalesQualified",
        "consent": terms.consent_on_create(shared=shared),
        "details": {
            "requirements": {"solutions": [], "additionalRequirements": {"attributes": [terms.marketplace_intent()]}}
        },
    }
    for spec in FIELDS:
        if spec.direction in ("both", "crm_to_pc") and view.get(spec.name) is not None:
            for path, wire in field_patches(spec.name, view[spec.name], accept_country_names=accept_country_names):
                _place(body, path, wire)
    for path, wire in field_patches("visible", shared, accept_country_names=accept_country_names):
        _place(body, path, wire)  # a co-sell is always shared with Microsoft sellers
    if not co_sell:
        body.pop("inviteContext", None)
    return body


def _place(document: dict[str, Any], path: Path, value: Any) -> None:
    for key in path[:-1]:
        document = document.setdefault(key, {})
    document[path[-1]] = value
