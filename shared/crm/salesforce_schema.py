"""The connector's Salesforce schema, read from the shipped source-format metadata (`crm_schema/salesforce`).

One reader for two users: `python -m shared salesforce provision` creates exactly these fields,
objects and permissions in an org, and the Salesforce simulator builds its custom objects from the
same files, so the schema we ship is the schema the simulator enforces.
"""

from __future__ import annotations

import dataclasses
import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.mapping.taxonomy import Kind, Taxonomy, taxonomy

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "crm_schema" / "salesforce" / "force-app" / "main" / "default"
PERMISSION_SET_NAME = "PCS_Integration"
# Metadata API field type -> the type Salesforce's describe reports for such a field
DESCRIBE_TYPES = {
    "Text": "string",
    "TextArea": "textarea",
    "LongTextArea": "textarea",
    "Checkbox": "boolean",
    "Url": "url",
    "Email": "email",
    "Phone": "phone",
    "Picklist": "picklist",
    "DateTime": "datetime",
    "Date": "date",
    "Number": "double",
    "Currency": "currency",
    "Percent": "percent",
    "Lookup": "reference",
    "MasterDetail": "reference",
}
_NS = {"md": "http://soap.sforce.com/2006/04/metadata"}
TAXONOMY_PICKLISTS: dict[str, Kind] = {
    "PCS_Solution_Area__c": "solution_area",
    "PCS_Solution_Play__c": "solution_play",
    "PCS_Partner_Role__c": "partner_role",
}
"""Picklists whose values come from the co-sell taxonomy (shared/partner_center/taxonomy), not from their XML."""


@dataclass(frozen=True)
class FieldSpec:
    """One custom field as declared in a `*.field-meta.xml` file."""

    object_name: str
    name: str
    label: str
    type: str  # Metadata API FieldType: Text, Checkbox, Url, Picklist, LongTextArea, DateTime, Lookup, ...
    description: str = ""
    length: int | None = None
    default_value: str | None = None
    external_id: bool = False
    unique: bool = False
    required: bool = False
    picklist_values: tuple[str, ...] = ()
    inactive_values: tuple[str, ...] = ()
    """Retired values: kept (so old records still show them) but no longer offered."""
    restricted_picklist: bool = False
    reference_to: str | None = None
    relationship_name: str | None = None
    delete_constraint: str | None = None
    visible_lines: int | None = None

    @property
    def full_name(self) -> str:
        return f"{self.object_name}.{self.name}"

    def tooling_metadata(self) -> dict[str, Any]:
        """The `Metadata` body of a Tooling API CustomField create/update (mirrors the XML elements)."""
        metadata: dict[str, Any] = {"label": self.label, "type": self.type, "description": self.description}
        optional: dict[str, Any] = {
            "length": self.length,
            "defaultValue": self.default_value,
            "referenceTo": self.reference_to,
            "relationshipName": self.relationship_name,
            "relationshipLabel": self.label if self.reference_to else None,
            "deleteConstraint": self.delete_constraint,
            "visibleLines": self.visible_lines,
        }
        metadata.update({key: value for key, value in optional.items() if value is not None})
        if self.external_id:
            metadata["externalId"] = True
        if self.unique:
            metadata["unique"] = True
        if self.type not in ("Checkbox", "Lookup", "MasterDetail"):
            metadata["required"] = self.required
        if self.picklist_values:
            metadata["valueSet"] = {
                "restricted": self.restricted_picklist,
                "valueSetDefinition": {
                    "sorted": False,
                    "value": [
                        {"fullName": value, "label": value, "default": False, "isActive": True}
                        for value in self.picklist_values
                    ]
                    + [
                        {"fullName": value, "label": value, "default": False, "isActive": False}
                        for value in self.inactive_values
                    ],
                },
            }
        return metadata


@dataclass(frozen=True)
class ObjectSpec:
    """A custom object (`*.object-meta.xml`) with its fields; standard objects carry only their custom fields."""

    name: str
    custom: bool
    label: str = ""
    plural_label: str = ""
    description: str = ""
    name_field_label: str = "Name"
    fields: tuple[FieldSpec, ...] = field(default_factory=tuple)

    def tooling_metadata(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "pluralLabel": self.plural_label,
            "description": self.description,
            "deploymentStatus": "Deployed",
            "sharingModel": "ReadWrite",
            "nameField": {"label": self.name_field_label, "type": "Text"},
        }


@dataclass(frozen=True)
class PermissionSpec:
    label: str
    description: str
    field_permissions: tuple[tuple[str, bool, bool], ...]  # (Object.Field, readable, editable)
    object_permissions: tuple[tuple[str, dict[str, bool]], ...]  # (object, {PermissionsRead: ..})


def _text(element: ET.Element, tag: str, default: str | None = None) -> str | None:
    found = element.find(f"md:{tag}", _NS)
    return found.text if found is not None and found.text is not None else default


def _flag(element: ET.Element, tag: str) -> bool:
    return (_text(element, tag, "false") or "false").strip().lower() == "true"


def _int(element: ET.Element, tag: str) -> int | None:
    value = _text(element, tag)
    return int(value) if value is not None else None


def _read_field(object_name: str, path: Path) -> FieldSpec:
    root = ET.parse(path).getroot()
    values = tuple(
        value.findtext("md:fullName", default="", namespaces=_NS)
        for value in root.findall("md:valueSet/md:valueSetDefinition/md:value", _NS)
    )
    value_set = root.find("md:valueSet", _NS)
    name = _text(root, "fullName")
    field_type = _text(root, "type")
    if not name or not field_type:
        raise ValueError(f"{path}: <fullName> and <type> are required")
    return FieldSpec(
        object_name=object_name,
        name=name,
        label=_text(root, "label", name) or name,
        type=field_type,
        description=_text(root, "description", "") or "",
        length=_int(root, "length"),
        default_value=_text(root, "defaultValue"),
        external_id=_flag(root, "externalId"),
        unique=_flag(root, "unique"),
        required=_flag(root, "required"),
        picklist_values=values,
        restricted_picklist=value_set is not None and _flag(value_set, "restricted"),
        reference_to=_text(root, "referenceTo"),
        relationship_name=_text(root, "relationshipName"),
        delete_constraint=_text(root, "deleteConstraint"),
        visible_lines=_int(root, "visibleLines"),
    )


def _with_taxonomy(field: FieldSpec, values: Taxonomy) -> FieldSpec:
    kind = TAXONOMY_PICKLISTS.get(field.name)
    if kind is None:
        return field
    active, retired = values.picklist(kind)
    return dataclasses.replace(field, picklist_values=active, inactive_values=retired)


@functools.cache
def load_objects(schema_dir: Path = SCHEMA_DIR, values: Taxonomy | None = None) -> tuple[ObjectSpec, ...]:
    """Every object folder of the schema, custom objects first (their fields may be looked up by others).
    Taxonomy picklists take their values from `values` (default: the shipped taxonomy)."""
    current = values or taxonomy()
    objects: list[ObjectSpec] = []
    for folder in sorted((schema_dir / "objects").iterdir()):
        fields = tuple(
            _with_taxonomy(_read_field(folder.name, path), current)
            for path in sorted(folder.glob("fields/*.field-meta.xml"))
        )
        object_file = folder / f"{folder.name}.object-meta.xml"
        if object_file.exists():
            root = ET.parse(object_file).getroot()
            name_field = root.find("md:nameField", _NS)
            objects.append(
                ObjectSpec(
                    name=folder.name,
                    custom=True,
                    label=_text(root, "label", folder.name) or folder.name,
                    plural_label=_text(root, "pluralLabel", folder.name) or folder.name,
                    description=_text(root, "description", "") or "",
                    name_field_label=_text(name_field, "label", "Name") if name_field is not None else "Name",  # type: ignore[arg-type]
                    fields=fields,
                )
            )
        else:
            objects.append(ObjectSpec(name=folder.name, custom=False, fields=fields))
    return tuple(sorted(objects, key=lambda spec: not spec.custom))


@functools.cache
def load_permission_set(schema_dir: Path = SCHEMA_DIR) -> PermissionSpec:
    root = ET.parse(schema_dir / "permissionsets" / f"{PERMISSION_SET_NAME}.permissionset-meta.xml").getroot()
    field_permissions = tuple(
        (
            element.findtext("md:field", default="", namespaces=_NS),
            _flag(element, "readable"),
            _flag(element, "editable"),
        )
        for element in root.findall("md:fieldPermissions", _NS)
    )
    names = {
        "allowRead": "PermissionsRead",
        "allowCreate": "PermissionsCreate",
        "allowEdit": "PermissionsEdit",
        "allowDelete": "PermissionsDelete",
        "viewAllRecords": "PermissionsViewAllRecords",
        "modifyAllRecords": "PermissionsModifyAllRecords",
    }
    object_permissions = tuple(
        (
            element.findtext("md:object", default="", namespaces=_NS),
            {api: _flag(element, tag) for tag, api in names.items()},
        )
        for element in root.findall("md:objectPermissions", _NS)
    )
    return PermissionSpec(
        label=_text(root, "label", PERMISSION_SET_NAME) or PERMISSION_SET_NAME,
        description=_text(root, "description", "") or "",
        field_permissions=field_permissions,
        object_permissions=object_permissions,
    )
