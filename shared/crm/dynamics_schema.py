"""The Dataverse schema the connector owns (SPEC 1.4), read from `crm_schema/dynamics/schema.json`.

One declarative file feeds both the provisioning command (which turns it into Web API metadata
bodies, see `dynamics_commands.py`) and the sandbox Dataverse simulator (which builds its custom
tables from it), so the two cannot drift apart.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.mapping.taxonomy import WORDS, Kind, Taxonomy, taxonomy

SCHEMA_PATH = Path(__file__).resolve().parent.parent.parent / "crm_schema" / "dynamics" / "schema.json"
CONNECTOR_COLUMNS_MARKER = "@connectorColumns"
TAXONOMY_CHOICE_MARKER = "@taxonomy:"
_OPTION_SLOTS = 10_000  # a publisher's option values: prefix * 10000 + 0..9999

ColumnType = Literal["String", "Boolean", "Picklist", "DateTime", "Memo"]


class _Definition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Publisher(_Definition):
    unique_name: str = Field(alias="uniqueName")
    friendly_name: str = Field(alias="friendlyName")
    customization_prefix: str = Field(alias="customizationPrefix")
    customization_option_value_prefix: int = Field(alias="customizationOptionValuePrefix")


class Solution(_Definition):
    unique_name: str = Field(alias="uniqueName")
    friendly_name: str = Field(alias="friendlyName")
    version: str


class ChoiceOption(_Definition):
    value: int
    label: str


class Column(_Definition):
    logical_name: str = Field(alias="logicalName")
    schema_name: str = Field(alias="schemaName")
    type: ColumnType
    display_name: str = Field(alias="displayName")
    description: str = ""
    max_length: int | None = Field(default=None, alias="maxLength")
    format: str | None = None
    default: bool | None = None
    choice: str | None = None
    options: tuple[ChoiceOption, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Column:
        if self.logical_name != self.schema_name.lower():
            raise ValueError(f"column {self.schema_name}: logicalName must be the lower-cased schemaName")
        if self.type in ("String", "Memo") and not self.max_length:
            raise ValueError(f"column {self.logical_name}: maxLength is required for {self.type}")
        return self


class PrimaryName(_Definition):
    logical_name: str = Field(alias="logicalName")
    schema_name: str = Field(alias="schemaName")
    max_length: int = Field(alias="maxLength")
    display_name: str = Field(alias="displayName")


class Lookup(_Definition):
    logical_name: str = Field(alias="logicalName")
    schema_name: str = Field(alias="schemaName")
    display_name: str = Field(alias="displayName")
    target: str
    relationship_schema_name: str = Field(alias="relationshipSchemaName")
    cascade_delete: Literal["Cascade", "RemoveLink", "Restrict"] = Field(default="RemoveLink", alias="cascadeDelete")

    @property
    def navigation_property(self) -> str:
        """Single-valued navigation property on the child (what `@odata.bind` uses)."""
        return self.logical_name

    @property
    def collection_navigation_property(self) -> str:
        """Collection-valued navigation property on the parent (what `$expand` uses)."""
        return self.relationship_schema_name


class AlternateKey(_Definition):
    logical_name: str = Field(alias="logicalName")
    schema_name: str = Field(alias="schemaName")
    display_name: str = Field(alias="displayName")
    key_attributes: tuple[str, ...] = Field(alias="keyAttributes")

    @model_validator(mode="after")
    def _logical_is_lower_schema(self) -> AlternateKey:
        # Dataverse derives a key's logical name from its schema name; a mismatch would never be found.
        if self.logical_name != self.schema_name.lower():
            raise ValueError(f"key {self.schema_name}: logicalName must be the lower-cased schemaName")
        return self


class Table(_Definition):
    logical_name: str = Field(alias="logicalName")
    standard: bool = False
    schema_name: str | None = Field(default=None, alias="schemaName")
    entity_set_name: str | None = Field(default=None, alias="entitySetName")
    display_name: str | None = Field(default=None, alias="displayName")
    display_collection_name: str | None = Field(default=None, alias="displayCollectionName")
    description: str = ""
    ownership_type: Literal["UserOwned", "OrganizationOwned"] = Field(default="UserOwned", alias="ownershipType")
    primary_name: PrimaryName | None = Field(default=None, alias="primaryName")
    columns: tuple[Column, ...] = ()
    lookups: tuple[Lookup, ...] = ()
    keys: tuple[AlternateKey, ...] = ()

    @model_validator(mode="after")
    def _custom_table_complete(self) -> Table:
        if not self.standard and not (
            self.schema_name and self.entity_set_name and self.primary_name and self.display_name
        ):
            raise ValueError(
                f"table {self.logical_name}: a custom table needs schemaName, entitySetName, displayName and primaryName"
            )
        return self

    @property
    def primary_id(self) -> str:
        return f"{self.logical_name}id"


class DataverseSchema(_Definition):
    publisher: Publisher
    solution: Solution
    tables: tuple[Table, ...]

    def table(self, logical_name: str) -> Table:
        for table in self.tables:
            if table.logical_name == logical_name:
                return table
        raise KeyError(f"the schema defines no table {logical_name!r}")

    @property
    def custom_tables(self) -> tuple[Table, ...]:
        return tuple(table for table in self.tables if not table.standard)


def taxonomy_options(values: Taxonomy, kind: Kind, prefix: int) -> list[dict[str, object]]:
    """The options of a taxonomy choice, retired values included (old records keep them; Dataverse
    cannot deactivate an option). A value's number comes from its text (CRC-32 into the publisher's
    10,000 option slots), the next free slot on a clash, taken in order of first appearance across
    the fiscal years: so a new year's file adds options and never renumbers an existing one."""
    taken: dict[int, str] = {}
    for label in values.history(kind):
        slot = zlib.crc32(label.encode("utf-8")) % _OPTION_SLOTS
        while slot in taken:
            slot = (slot + 1) % _OPTION_SLOTS
        taken[slot] = label
    return [{"value": prefix * _OPTION_SLOTS + slot, "label": label} for slot, label in taken.items()]


def _expand(raw: dict[str, object], values: Taxonomy) -> dict[str, object]:
    """Resolve `@connectorColumns` and each column's `choice` (a `@taxonomy:<kind>` choice from the
    co-sell taxonomy) into plain, self-contained tables."""
    choices = raw.get("choices", {})
    shared_columns = raw.get("connectorColumns", [])
    if not isinstance(choices, dict) or not isinstance(shared_columns, list):
        raise ValueError("schema: 'choices' must be an object and 'connectorColumns' a list")
    prefix = int((raw.get("publisher") or {}).get("customizationOptionValuePrefix", 0))  # type: ignore[attr-defined]
    for name, options in list(choices.items()):
        if isinstance(options, str) and options.startswith(TAXONOMY_CHOICE_MARKER):
            kind = options.removeprefix(TAXONOMY_CHOICE_MARKER)
            if kind not in WORDS:
                raise ValueError(f"schema: choice {name} names unknown taxonomy list {kind!r}")
            choices[name] = taxonomy_options(values, kind, prefix)
    tables = []
    for table in raw.get("tables", []):  # type: ignore[attr-defined]
        columns: list[dict[str, object]] = []
        for column in table.get("columns", []):
            columns.extend(shared_columns if column == CONNECTOR_COLUMNS_MARKER else [column])
        resolved = []
        for column in columns:
            column = dict(column)
            choice = column.get("choice")
            if choice is not None:
                if choice not in choices:
                    raise ValueError(f"schema: column {column.get('logicalName')} names unknown choice {choice!r}")
                column["options"] = choices[choice]
            resolved.append(column)
        tables.append({**table, "columns": resolved})
    return {"publisher": raw.get("publisher"), "solution": raw.get("solution"), "tables": tables}


def load_schema(path: Path | None = None, values: Taxonomy | None = None) -> DataverseSchema:
    """The declarative schema, taxonomy choices from `values` (default: the shipped taxonomy);
    raises ValueError naming the file and the problem when it is invalid."""
    source = path or SCHEMA_PATH
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
        return DataverseSchema.model_validate(_expand(raw, values or taxonomy()))
    except (OSError, ValueError) as error:
        raise ValueError(f"Dataverse schema {source}: {error}") from error
