"""Neutral values -> Partner Center wire: the body of a new referral, and JSON Patch operations.

Partner Center accepts only `add` and `replace` (reference 0, 1.1). JSON Patch `replace` needs
the member to exist, so each operation is built against the referral as last read: `replace` when
the member is there, `add` when only its parent is, and an `add` of the whole parent otherwise.
"""

from __future__ import annotations

from typing import Any

from shared.mapping.fields import (
    BY_NAME,
    FIELDS,
    View,
    asks_microsoft_for_help,
)
from shared.mapping.status import StatusChange
from shared.model.referral import PatchOperation, Referral


def field_patches(field: str, value: Any, *, accept_country_names: bool) -> list[tuple[tuple[str, ...], Any]]:
    """(JSON Patch path, wire value) pairs carrying one neutral field's new value (the registry says where)."""
    spec = BY_NAME[field]
    if spec.patch_values is not None:
        return spec.patch_values(value, accept_country_names)
    if spec.pc_path is None:
        raise ValueError(f"the field {field!r} is never written to Partner Center")
    return [(spec.pc_path, spec.to_wire(value))]


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
        for path, wire in field_patches(field, value, accept_country_names=accept_country_names):
            operations.append(_op(document, path, wire))
        if field == "help_needed" and asks_microsoft_for_help({"help_needed": value}) and "visible" not in changes:
            # Asking Microsoft for help makes it a co-sell, which is shared with Microsoft sellers.
            operations.extend(
                _op(document, path, wire)
                for path, wire in field_patches("visible", True, accept_country_names=accept_country_names)
            )
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
    co_sell = asks_microsoft_for_help(view)
    shared = co_sell or bool(view.get("visible"))
    body: dict[str, Any] = {
        "externalReferenceId": crm_record_id,
        "type": "Shared" if shared else "Independent",
        "qualification": "SalesQualified",
        "details": {"requirements": {"solutions": []}},
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


def _place(document: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        document = document.setdefault(key, {})
    document[path[-1]] = value
