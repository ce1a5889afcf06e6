"""`python -m shared salesforce provision [--check]`: create the connector's schema in a Salesforce org.

What it makes match `crm_schema/salesforce` (the same files the Salesforce CLI deploys):
custom objects `PCS_Solution__c` / `PCS_Solution_Detail__c`, the PCS_ fields on Opportunity and
Lead, the permission set `PCS_Integration` with its field and object permissions, and the
assignment of that permission set to the integration user.

Idempotent: it reads what exists first and writes only the differences, so a second run makes no
write call at all. `--check` reports the differences and exits 1 if there are any, writing nothing.

Why the Tooling API and not the Metadata API: the Tooling API's `CustomObject` / `CustomField`
sObjects take the same metadata as JSON over the REST session we already have (our timeouts,
retries and CA bundle apply), while simple-salesforce's Metadata API client (`sf.mdapi`) is SOAP
through zeep with its own transport and a session header cached at first use (crm-apis.md A1).
Permissions are plain sObjects (PermissionSet, FieldPermissions, ObjectPermissions,
PermissionSetAssignment). The page layout is deployed with the Salesforce CLI only (docs/salesforce.md).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from shared.crm.port import CrmError
from shared.crm.salesforce import SalesforceAdapter
from shared.crm.salesforce_schema import (
    DESCRIBE_TYPES,
    PERMISSION_SET_NAME,
    FieldSpec,
    ObjectSpec,
    load_objects,
    load_permission_set,
)
from shared.mapping.taxonomy import Taxonomy
from shared.settings import Settings, load_settings


@dataclass(frozen=True)
class Change:
    """One difference between the org and the shipped schema."""

    action: Literal["create", "update", "conflict"]
    kind: str  # CustomObject, CustomField, PermissionSet, FieldPermissions, ObjectPermissions, PermissionSetAssignment
    name: str
    reason: str
    apply: Any = None  # a callable doing the write (None for conflicts, which need a person)

    def describe(self) -> str:
        return f"{self.action:8} {self.kind} {self.name}: {self.reason}"


class SalesforceProvisioner:
    def __init__(self, adapter: SalesforceAdapter, values: Taxonomy | None = None) -> None:
        self.adapter = adapter
        self.values = values  # the co-sell taxonomy; None: the shipped one

    # ---- reading the org -------------------------------------------------------------------------
    def _query(self, soql: str) -> list[dict[str, Any]]:
        return self.adapter._query("provision", soql)

    def _tooling_query(self, soql: str) -> list[dict[str, Any]]:
        answer = self.adapter._call("provision", lambda sf: sf.toolingexecute("query/", params={"q": soql}))
        return list(answer.get("records") or [])

    def _tooling(self, method: str, action: str, body: dict[str, Any]) -> None:
        answer = self.adapter._call(
            "provision", lambda sf: sf.toolingexecute(action, method=method, data=body), idempotent=method != "POST"
        )
        if isinstance(answer, dict) and answer.get("success") is False:
            raise CrmError(f"Salesforce Tooling {method} {action} failed: {answer.get('errors')}")

    def _describe(self, object_name: str) -> dict[str, dict[str, Any]]:
        result = self.adapter._call("provision", lambda sf: getattr(sf, object_name).describe())
        return {item["name"].lower(): item for item in result["fields"]}

    def _create(self, object_name: str, values: dict[str, Any]) -> str:
        created = self.adapter._call("provision", lambda sf: getattr(sf, object_name).create(values), idempotent=False)
        return str(created["id"])

    def _update(self, object_name: str, record_id: str, values: dict[str, Any]) -> None:
        self.adapter._call("provision", lambda sf: getattr(sf, object_name).update(record_id, values))

    # ---- planning ---------------------------------------------------------------------------------
    def plan(self) -> list[Change]:
        """Every difference, in the order it must be applied (objects, fields, permissions, assignment)."""
        specs = load_objects(values=self.values)
        existing_objects = {
            row["DeveloperName"] + "__c": row["Id"]
            for row in self._tooling_query("SELECT Id, DeveloperName FROM CustomObject")
        }
        changes: list[Change] = []
        for spec in specs:
            if spec.custom and spec.name not in existing_objects:
                changes.append(Change("create", "CustomObject", spec.name, "missing", self._object_writer(spec)))
        tables = [spec.name if not spec.custom else existing_objects.get(spec.name, "") for spec in specs]
        quoted = ", ".join(f"'{table}'" for table in tables if table)
        existing_fields = {
            (row["TableEnumOrId"], row["DeveloperName"] + "__c"): row["Id"]
            for row in self._tooling_query(
                f"SELECT Id, DeveloperName, TableEnumOrId FROM CustomField WHERE TableEnumOrId IN ({quoted})"
            )
        }
        for spec, table in zip(specs, tables, strict=True):
            described = self._describe(spec.name) if table else {}
            for field in spec.fields:
                field_id = existing_fields.get((table, field.name))
                if field_id is None:
                    changes.append(
                        Change("create", "CustomField", field.full_name, "missing", self._field_writer(field))
                    )
                    continue
                current = described.get(field.name.lower())
                if current is None:
                    continue  # exists but not visible to us yet (field-level security): the permission step fixes that
                if current.get("type") != DESCRIBE_TYPES.get(field.type):
                    reason = f"is {current.get('type')} in the org, the schema says {field.type}; change it in Setup"
                    changes.append(Change("conflict", "CustomField", field.full_name, reason))
                    continue
                differences = _field_differences(field, current)
                if differences:
                    changes.append(
                        Change(
                            "update",
                            "CustomField",
                            field.full_name,
                            "; ".join(differences),
                            self._field_writer(field, field_id),
                        )
                    )
        changes += self._permission_changes()
        return changes

    def _object_writer(self, spec: ObjectSpec) -> Any:
        return lambda: self._tooling(
            "POST", "sobjects/CustomObject/", {"FullName": spec.name, "Metadata": spec.tooling_metadata()}
        )

    def _field_writer(self, field: FieldSpec, field_id: str | None = None) -> Any:
        if field_id is None:
            body = {"FullName": field.full_name, "Metadata": field.tooling_metadata()}
            return lambda: self._tooling("POST", "sobjects/CustomField/", body)
        return lambda: self._tooling(
            "PATCH", f"sobjects/CustomField/{field_id}", {"Metadata": field.tooling_metadata()}
        )

    def _permission_changes(self) -> list[Change]:
        spec = load_permission_set()
        rows = self._query(f"SELECT Id FROM PermissionSet WHERE Name = '{PERMISSION_SET_NAME}'")
        changes: list[Change] = []
        holder: dict[str, str] = {"id": rows[0]["Id"]} if rows else {}

        def parent() -> str:
            return holder["id"]

        if not rows:

            def create_set() -> None:
                holder["id"] = self._create(
                    "PermissionSet",
                    {"Name": PERMISSION_SET_NAME, "Label": spec.label, "Description": spec.description[:255]},
                )

            changes.append(Change("create", "PermissionSet", PERMISSION_SET_NAME, "missing", create_set))
        user_id = self._integration_user_id()
        field_rows, object_rows, assigned = (
            self._existing_permissions(rows[0]["Id"], user_id) if rows else ({}, {}, False)
        )
        fields = [
            (name, {"PermissionsRead": read, "PermissionsEdit": edit}) for name, read, edit in spec.field_permissions
        ]
        changes += self._permission_row_changes("FieldPermissions", fields, field_rows, parent)
        changes += self._permission_row_changes("ObjectPermissions", spec.object_permissions, object_rows, parent)
        if not assigned:
            values = {"AssigneeId": user_id}
            changes.append(
                Change(
                    "create",
                    "PermissionSetAssignment",
                    f"{PERMISSION_SET_NAME} -> {user_id}",
                    "missing",
                    self._child_writer("PermissionSetAssignment", parent, values, "PermissionSetId"),
                )
            )
        return changes

    def _existing_permissions(self, parent_id: str, user_id: str) -> tuple[dict[str, Any], dict[str, Any], bool]:
        """The permission set's field and object permission rows, and whether the user holds it."""
        field_rows = {
            row["Field"]: row
            for row in self._query(
                f"SELECT Id, Field, PermissionsRead, PermissionsEdit FROM FieldPermissions WHERE ParentId = '{parent_id}'"
            )
        }
        flags = "PermissionsRead, PermissionsCreate, PermissionsEdit, PermissionsDelete, PermissionsViewAllRecords, PermissionsModifyAllRecords"
        object_rows = {
            row["SobjectType"]: row
            for row in self._query(
                f"SELECT Id, SobjectType, {flags} FROM ObjectPermissions WHERE ParentId = '{parent_id}'"
            )
        }
        assigned = bool(
            self._query(
                f"SELECT Id FROM PermissionSetAssignment WHERE PermissionSetId = '{parent_id}' AND AssigneeId = '{user_id}'"
            )
        )
        return field_rows, object_rows, assigned

    def _permission_row_changes(
        self, object_name: str, wanted_rows: Any, existing: dict[str, Any], parent: Any
    ) -> list[Change]:
        """Create the missing rows (FieldPermissions: keyed by field; ObjectPermissions: by object),
        update those whose flags differ."""
        changes: list[Change] = []
        for key, wanted in wanted_rows:
            row = existing.get(key)
            if row is None:
                target = (
                    {"Field": key, "SobjectType": key.split(".")[0]}
                    if object_name == "FieldPermissions"
                    else {"SobjectType": key}
                )
                writer = self._child_writer(object_name, parent, {**target, **wanted})
                changes.append(Change("create", object_name, key, "missing", writer))
            elif any(bool(row.get(flag)) != value for flag, value in wanted.items()):
                changes.append(
                    Change(
                        "update", object_name, key, f"should be {wanted}", self._updater(object_name, row["Id"], wanted)
                    )
                )
        return changes

    def _child_writer(
        self, object_name: str, parent: Any, values: dict[str, Any], parent_field: str = "ParentId"
    ) -> Any:
        return lambda: self._create(object_name, {parent_field: parent(), **values})

    def _updater(self, object_name: str, record_id: str, values: dict[str, Any]) -> Any:
        return lambda: self._update(object_name, record_id, values)

    def _integration_user_id(self) -> str:
        self.adapter._sf()  # signs in; token flows tell us the user id
        if self.adapter._user_id:
            return self.adapter._user_id
        username = self.adapter.settings.salesforce_username or ""
        rows = self._query(self.adapter._soql("SELECT Id FROM User WHERE Username = {}", username))
        if not rows:
            raise CrmError(f"SALESFORCE_USERNAME {username!r} names no user in the org")
        return str(rows[0]["Id"])

    def apply(self, changes: list[Change], out: TextIO) -> None:
        conflicts = [change for change in changes if change.action == "conflict"]
        if conflicts:
            raise CrmError("cannot provision: " + "; ".join(change.describe() for change in conflicts))
        for change in changes:
            print(f"  {change.describe()}", file=out)
            change.apply()


def _field_differences(field: FieldSpec, current: dict[str, Any]) -> list[str]:
    differences = []
    if field.type in ("Text", "LongTextArea", "TextArea") and field.length and current.get("length") != field.length:
        differences.append(f"length {current.get('length')} -> {field.length}")
    if field.picklist_values:
        values = [item.get("value") for item in current.get("picklistValues") or []]
        if set(values) != set(field.picklist_values):
            differences.append(f"picklist values {values} -> {list(field.picklist_values)}")
    if bool(current.get("externalId")) != field.external_id:
        differences.append(f"externalId -> {field.external_id}")
    if bool(current.get("unique")) != field.unique:
        differences.append(f"unique -> {field.unique}")
    if (current.get("label") or "") != field.label:
        differences.append(f"label {current.get('label')!r} -> {field.label!r}")
    return differences


def provision(
    settings: Settings,
    out: TextIO,
    *,
    check: bool = False,
    adapter: SalesforceAdapter | None = None,
    values: Taxonomy | None = None,
) -> int:
    """Bring the org to the shipped schema and co-sell taxonomy (or, with `check`, only report).
    Exit code: 0 ok, 1 differences/failure."""
    adapter = adapter or SalesforceAdapter(settings)
    provisioner = SalesforceProvisioner(adapter, values)
    try:
        changes = provisioner.plan()
        if check:
            for change in changes:
                print(f"  {change.describe()}", file=out)
            print("✔ the Salesforce schema is complete" if not changes else f"✖ {len(changes)} difference(s)", file=out)
            return 1 if changes else 0
        if not changes:
            print("✔ nothing to do: the Salesforce schema is complete", file=out)
            return 0
        provisioner.apply(changes, out)
    except CrmError as error:
        print(f"✖ provisioning failed: {error}", file=out)
        return 1
    print(f"✔ applied {len(changes)} change(s)", file=out)
    return 0


def _provision_command(arguments: argparse.Namespace, out: TextIO) -> int:
    return provision(load_settings(), out, check=bool(arguments.check))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `salesforce` command group to `python -m shared`."""
    group = subparsers.add_parser("salesforce", help="Salesforce commands")
    commands = group.add_subparsers(dest="salesforce_command", required=True, metavar="COMMAND")
    command = commands.add_parser(
        "provision",
        help="create the connector's objects, fields and permission set in Salesforce and assign it (idempotent)",
    )
    command.add_argument("--check", action="store_true", help="only report what is missing; exit 1 if anything is")
    command.set_defaults(handler=_provision_command)
