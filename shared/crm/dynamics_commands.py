"""`python -m shared dynamics provision [--check]`: create the connector's Dataverse schema.

Reads `crm_schema/dynamics/schema.json` and compares it with the org through the Web API metadata
endpoints (crm-apis.md B5): publisher and solution, custom tables (`EntityDefinitions`), columns
(`Attributes`), lookups (`RelationshipDefinitions`), alternate keys (`Keys`) and, when
DATAVERSE_CHANGE_TRACKING is true, change tracking on the polled tables. It then creates what is
missing, in the solution, and publishes. Idempotent: a second run finds everything and writes
nothing. `--check` only reports (exit 1 when something is missing). A column that exists with
another type is reported and left alone: Dataverse cannot change a column's type.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from shared.crm.dynamics_http import DataverseHttp, JsonDict, odata_string
from shared.crm.dynamics_schema import Column, DataverseSchema, Lookup, Table, load_schema
from shared.crm.port import CrmNotFoundError
from shared.mapping.taxonomy import Taxonomy
from shared.settings import Settings, load_settings

CHANGE_TRACKED_TABLES = ("opportunity", "lead", "pcs_partnercentersolution")
KEY_ACTIVE_TIMEOUT_SECONDS = 300.0


def label(text: str) -> JsonDict:
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [
            {"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text, "LanguageCode": 1033}
        ],
    }


_REQUIRED_NONE = {
    "Value": "None",
    "CanBeChanged": True,
    "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
}


def column_body(column: Column) -> JsonDict:
    """The `*AttributeMetadata` body that creates `column` (crm-apis.md B5)."""
    body: JsonDict = {
        "SchemaName": column.schema_name,
        "RequiredLevel": _REQUIRED_NONE,
        "DisplayName": label(column.display_name),
        "Description": label(column.description),
    }
    if column.type == "String":
        body |= {
            "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
            "AttributeType": "String",
            "AttributeTypeName": {"Value": "StringType"},
            "MaxLength": column.max_length,
            "FormatName": {"Value": column.format or "Text"},
        }
    elif column.type == "Memo":
        body |= {
            "@odata.type": "Microsoft.Dynamics.CRM.MemoAttributeMetadata",
            "AttributeType": "Memo",
            "AttributeTypeName": {"Value": "MemoType"},
            "Format": "TextArea",
            "MaxLength": column.max_length,
        }
    elif column.type == "Boolean":
        body |= {
            "@odata.type": "Microsoft.Dynamics.CRM.BooleanAttributeMetadata",
            "AttributeType": "Boolean",
            "AttributeTypeName": {"Value": "BooleanType"},
            "DefaultValue": bool(column.default),
            "OptionSet": {
                "TrueOption": {"Value": 1, "Label": label("Yes")},
                "FalseOption": {"Value": 0, "Label": label("No")},
                "OptionSetType": "Boolean",
            },
        }
    elif column.type == "Picklist":
        body |= {
            "@odata.type": "Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
            "AttributeType": "Picklist",
            "AttributeTypeName": {"Value": "PicklistType"},
            "OptionSet": {
                "@odata.type": "Microsoft.Dynamics.CRM.OptionSetMetadata",
                "Options": [{"Value": option.value, "Label": label(option.label)} for option in column.options],
                "IsGlobal": False,
                "OptionSetType": "Picklist",
            },
        }
    else:
        body |= {
            "@odata.type": "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata",
            "AttributeType": "DateTime",
            "AttributeTypeName": {"Value": "DateTimeType"},
            "Format": column.format or "DateAndTime",
            "DateTimeBehavior": {"Value": "UserLocal"},
        }
    return body


def table_body(table: Table) -> JsonDict:
    assert table.primary_name is not None  # the schema validates custom tables
    primary = table.primary_name
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
        "SchemaName": table.schema_name,
        "EntitySetName": table.entity_set_name,
        "DisplayName": label(table.display_name or table.logical_name),
        "DisplayCollectionName": label(table.display_collection_name or table.display_name or table.logical_name),
        "Description": label(table.description),
        "OwnershipType": table.ownership_type,
        "HasActivities": False,
        "HasNotes": False,
        "IsActivity": False,
        "Attributes": [
            {
                "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                "AttributeType": "String",
                "AttributeTypeName": {"Value": "StringType"},
                "SchemaName": primary.schema_name,
                "IsPrimaryName": True,
                "MaxLength": primary.max_length,
                "FormatName": {"Value": "Text"},
                "RequiredLevel": {"Value": "ApplicationRequired", "CanBeChanged": True},
                "DisplayName": label(primary.display_name),
            }
        ],
    }


def relationship_body(table: Table, lookup: Lookup) -> JsonDict:
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
        "SchemaName": lookup.relationship_schema_name,
        "ReferencedEntity": lookup.target,
        "ReferencedAttribute": f"{lookup.target}id",
        "ReferencingEntity": table.logical_name,
        "ReferencedEntityNavigationPropertyName": lookup.collection_navigation_property,
        "ReferencingEntityNavigationPropertyName": lookup.navigation_property,
        "CascadeConfiguration": {
            "Assign": "NoCascade",
            "Delete": lookup.cascade_delete,
            "Merge": "NoCascade",
            "Reparent": "NoCascade",
            "Share": "NoCascade",
            "Unshare": "NoCascade",
        },
        "Lookup": {
            "@odata.type": "Microsoft.Dynamics.CRM.LookupAttributeMetadata",
            "AttributeType": "Lookup",
            "AttributeTypeName": {"Value": "LookupType"},
            "SchemaName": lookup.schema_name,
            "DisplayName": label(lookup.display_name),
            "RequiredLevel": _REQUIRED_NONE,
        },
    }


@dataclass
class Action:
    """One difference between the schema and the org, and how to fix it (None: cannot be fixed here)."""

    description: str
    apply: Callable[[], None] | None
    table: str | None = None


class Provisioner:
    """Compares the declarative schema with the org and creates what is missing."""

    def __init__(self, http: DataverseHttp, schema: DataverseSchema, *, change_tracking: bool) -> None:
        self.http = http
        self.schema = schema
        self.change_tracking = change_tracking
        self.solution_header = {"MSCRM.SolutionUniqueName": schema.solution.unique_name}

    # ---- reading the org ------------------------------------------------------------------------
    def _get(self, url: str, params: dict[str, str] | None = None) -> JsonDict | None:
        try:
            return self.http.get_json("provision", url, params=params, headers={"Consistency": "Strong"})
        except CrmNotFoundError:
            return None

    def _find(self, entity_set: str, unique_name: str, id_column: str) -> str | None:
        found = self._get(
            entity_set, {"$select": id_column, "$filter": f"uniquename eq {odata_string(unique_name)}"}
        ) or {"value": []}
        rows = found.get("value", [])
        return str(rows[0][id_column]) if rows else None

    def _entity(self, logical_name: str) -> JsonDict | None:
        return self._get(
            f"EntityDefinitions(LogicalName={odata_string(logical_name)})",
            {
                "$select": "LogicalName,ChangeTrackingEnabled",
                "$expand": "Attributes($select=LogicalName,AttributeType,MaxLength),"
                "Keys($select=LogicalName,KeyAttributes,EntityKeyIndexStatus)",
            },
        )

    # ---- planning -------------------------------------------------------------------------------------
    def plan(self) -> list[Action]:
        actions: list[Action] = []
        publisher = self.schema.publisher
        if self._find("publishers", publisher.unique_name, "publisherid") is None:
            actions.append(
                Action(
                    f"create publisher {publisher.unique_name} (prefix {publisher.customization_prefix})",
                    self._create_publisher,
                )
            )
        if self._find("solutions", self.schema.solution.unique_name, "solutionid") is None:
            actions.append(Action(f"create solution {self.schema.solution.unique_name}", self._create_solution))
        for table in self.schema.tables:
            entity = self._entity(table.logical_name)
            if entity is None:
                if table.standard:
                    actions.append(Action(f"table {table.logical_name} does not exist in this org", None))
                    continue
                actions.append(
                    Action(
                        f"create table {table.logical_name}",
                        self._post("EntityDefinitions", table_body(table)),
                        table.logical_name,
                    )
                )
                entity = {
                    "Attributes": [{"LogicalName": table.primary_name.logical_name if table.primary_name else ""}],
                    "Keys": [],
                }
            actions += self._column_actions(table, entity)
            actions += self._lookup_actions(table)
            actions += self._key_actions(table, entity)
            if (
                self.change_tracking
                and table.logical_name in CHANGE_TRACKED_TABLES
                and not entity.get("ChangeTrackingEnabled")
            ):
                actions.append(
                    Action(
                        f"enable change tracking on {table.logical_name} (irreversible)",
                        self._tracking(table.logical_name),
                        table.logical_name,
                    )
                )
        return actions

    def _column_actions(self, table: Table, entity: JsonDict) -> list[Action]:
        existing = {str(item["LogicalName"]): item for item in entity.get("Attributes", [])}
        actions: list[Action] = []
        url = f"EntityDefinitions(LogicalName={odata_string(table.logical_name)})/Attributes"
        for column in table.columns:
            found = existing.get(column.logical_name)
            if found is None:
                actions.append(
                    Action(
                        f"create column {table.logical_name}.{column.logical_name} ({column.type})",
                        self._post(url, column_body(column)),
                        table.logical_name,
                    )
                )
            elif found.get("AttributeType") not in (None, column.type):
                actions.append(
                    Action(
                        f"column {table.logical_name}.{column.logical_name} is a {found.get('AttributeType')}, the "
                        f"schema wants {column.type}: fix it by hand (Dataverse cannot change a column's type)",
                        None,
                    )
                )
            elif column.type == "Picklist" and column.options:
                actions += self._option_actions(table, column)
        return actions

    def _option_actions(self, table: Table, column: Column) -> list[Action]:
        """Options the schema has and the org's choice lacks (a new fiscal year's taxonomy values).
        Options the schema dropped are left: records keep them, and Dataverse cannot deactivate one."""
        url = (
            f"EntityDefinitions(LogicalName={odata_string(table.logical_name)})/Attributes("
            f"LogicalName={odata_string(column.logical_name)})/Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
        )
        found = self._get(url, {"$select": "LogicalName", "$expand": "OptionSet"}) or {}
        present = {item.get("Value") for item in (found.get("OptionSet") or {}).get("Options") or []}
        return [
            Action(
                f"add option {option.label!r} ({option.value}) to {table.logical_name}.{column.logical_name}",
                self._post(
                    "InsertOptionValue",
                    {
                        "EntityLogicalName": table.logical_name,
                        "AttributeLogicalName": column.logical_name,
                        "Value": option.value,
                        "Label": label(option.label),
                        "SolutionUniqueName": self.schema.solution.unique_name,
                    },
                    expected=(200, 204),
                ),
                table.logical_name,
            )
            for option in column.options
            if option.value not in present
        ]

    def _lookup_actions(self, table: Table) -> list[Action]:
        actions: list[Action] = []
        for lookup in table.lookups:
            found = self._get(f"RelationshipDefinitions(SchemaName={odata_string(lookup.relationship_schema_name)})")
            if found is None:
                actions.append(
                    Action(
                        f"create lookup {table.logical_name}.{lookup.logical_name} -> {lookup.target}",
                        self._post("RelationshipDefinitions", relationship_body(table, lookup)),
                        table.logical_name,
                    )
                )
        return actions

    def _key_actions(self, table: Table, entity: JsonDict) -> list[Action]:
        existing = {str(item["LogicalName"]) for item in entity.get("Keys", [])}
        url = f"EntityDefinitions(LogicalName={odata_string(table.logical_name)})/Keys"
        return [
            Action(
                f"create alternate key {table.logical_name}.{key.logical_name} on {', '.join(key.key_attributes)}",
                self._post(
                    url,
                    {
                        "SchemaName": key.schema_name,
                        "DisplayName": label(key.display_name),
                        "KeyAttributes": list(key.key_attributes),
                    },
                ),
                table.logical_name,
            )
            for key in table.keys
            if key.logical_name not in existing
        ]

    # ---- applying ---------------------------------------------------------------------------------------
    def _post(self, url: str, body: JsonDict, expected: tuple[int, ...] = (204,)) -> Callable[[], None]:
        def apply() -> None:
            self.http.request("provision", "POST", url, json_body=body, headers=self.solution_header, expected=expected)

        return apply

    def _create_publisher(self) -> None:
        publisher = self.schema.publisher
        self.http.request(
            "provision",
            "POST",
            "publishers",
            json_body={
                "uniquename": publisher.unique_name,
                "friendlyname": publisher.friendly_name,
                "customizationprefix": publisher.customization_prefix,
                "customizationoptionvalueprefix": publisher.customization_option_value_prefix,
            },
            expected=(204,),
        )

    def _create_solution(self) -> None:
        publisher_id = self._find("publishers", self.schema.publisher.unique_name, "publisherid")
        solution = self.schema.solution
        self.http.request(
            "provision",
            "POST",
            "solutions",
            json_body={
                "uniquename": solution.unique_name,
                "friendlyname": solution.friendly_name,
                "version": solution.version,
                "publisherid@odata.bind": f"/publishers({publisher_id})",
            },
            expected=(204,),
        )

    def _tracking(self, logical_name: str) -> Callable[[], None]:
        def apply() -> None:
            url = f"EntityDefinitions(LogicalName={odata_string(logical_name)})"
            definition = self.http.get_json("provision", url)
            definition = {key: value for key, value in definition.items() if key not in ("Attributes", "Keys")}
            definition["ChangeTrackingEnabled"] = True
            # Definitions are updated with PUT of the full definition (crm-apis.md B5).
            self.http.request(
                "provision",
                "PUT",
                url,
                json_body=definition,
                headers={**self.solution_header, "MSCRM.MergeLabels": "true"},
            )

        return apply

    def apply(self, actions: list[Action], out: TextIO, *, key_timeout: float = KEY_ACTIVE_TIMEOUT_SECONDS) -> None:
        changed_tables: list[str] = []
        for action in actions:
            if action.apply is None:
                continue
            action.apply()
            print(f"  + {action.description}", file=out)
            if action.table and action.table not in changed_tables:
                changed_tables.append(action.table)
        if changed_tables:
            entities = "".join(f"<entity>{name}</entity>" for name in changed_tables)
            xml = f"<importexportxml><entities>{entities}</entities></importexportxml>"
            self.http.request("provision", "POST", "PublishXml", json_body={"ParameterXml": xml})
            print(f"  + published {', '.join(changed_tables)}", file=out)
        self.wait_for_keys(key_timeout, out)

    def wait_for_keys(self, timeout: float, out: TextIO) -> None:
        """Alternate-key indexes build asynchronously; upserts by key fail until they are Active."""
        deadline = time.monotonic() + timeout
        for table in self.schema.tables:
            for key in table.keys:
                url = f"EntityDefinitions(LogicalName={odata_string(table.logical_name)})/Keys"
                while True:
                    keys = (self._get(url, {"$select": "LogicalName,EntityKeyIndexStatus"}) or {}).get("value", [])
                    status = next(
                        (
                            item.get("EntityKeyIndexStatus")
                            for item in keys
                            if item.get("LogicalName") == key.logical_name
                        ),
                        None,
                    )
                    if status == "Active":
                        break
                    if status == "Failed" or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"alternate key {table.logical_name}.{key.logical_name} is {status}, not Active"
                        )
                    time.sleep(0.5)


def provision(
    settings: Settings, out: TextIO, *, check: bool, http: DataverseHttp | None = None, values: Taxonomy | None = None
) -> int:
    """Run the provisioning (or only the check) with the co-sell taxonomy `values` (default: the
    shipped one); returns the process exit code."""
    client = http or DataverseHttp(settings)
    try:
        schema = load_schema(values=values)
        provisioner = Provisioner(client, schema, change_tracking=settings.dataverse_change_tracking)
        actions = provisioner.plan()
        blocked = [action for action in actions if action.apply is None]
        for action in blocked:
            print(f"  ✖ {action.description}", file=out)
        if check:
            for action in actions:
                if action.apply is not None:
                    print(f"  - missing: {action.description}", file=out)
            print("✔ the Dataverse schema is complete" if not actions else f"✖ {len(actions)} difference(s)", file=out)
            return 0 if not actions else 1
        if not actions:
            print("✔ the Dataverse schema is complete; nothing to do", file=out)
            return 0
        provisioner.apply(actions, out)
        print(f"✔ provisioned {len(actions) - len(blocked)} change(s)", file=out)
        return 1 if blocked else 0
    finally:
        if http is None:
            client.close()


def _provision_command(arguments: argparse.Namespace, out: TextIO) -> int:
    return provision(load_settings(), out, check=bool(arguments.check))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `dynamics` command group to `python -m shared`."""
    group = subparsers.add_parser("dynamics", help="Dynamics 365 (Dataverse) commands")
    commands = group.add_subparsers(dest="dynamics_command", required=True, metavar="COMMAND")
    command = commands.add_parser(
        "provision",
        help="create the connector's columns, tables, choices and alternate keys in Dataverse (idempotent)",
    )
    command.add_argument("--check", action="store_true", help="only report what is missing; exit 1 if anything is")
    command.set_defaults(handler=_provision_command)
