"""Table and column definitions of the Dataverse simulator: the standard tables of an org, and the
connector's own columns and tables built from `crm_schema/dynamics` (or added later through the
metadata endpoints, exactly as the provisioning command does against a real org).

Logical names follow crm-apis.md B6. Lookups read as `_<column>_value` and are written through
single-valued navigation properties with `@odata.bind`; polymorphic lookups (customer, connection
ends) have one navigation property per target (`customerid_account`, `customerid_contact`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from shared.crm.dynamics_schema import Column, DataverseSchema, Lookup, Table

# Attribute types (AttributeMetadata.AttributeType) the simulator understands.
LOOKUP_TYPES = {"Lookup", "Customer", "Owner"}

# statecode -> allowed statuscode values, per table (crm-apis.md B2 "Opportunity state").
DEFAULT_STATES: dict[int, set[int]] = {0: {1}, 1: {2}}
STATES: dict[str, dict[int, set[int]]] = {
    "opportunity": {0: {1, 2}, 1: {3}, 2: {4, 5}},
    "lead": {0: {1, 2}, 1: {3}, 2: {4, 5, 6, 7}},
}

ATTRIBUTE_METADATA_TYPES_BY_COLUMN = {
    "String": "StringAttributeMetadata",
    "Memo": "MemoAttributeMetadata",
    "Boolean": "BooleanAttributeMetadata",
    "Picklist": "PicklistAttributeMetadata",
    "State": "StateAttributeMetadata",
    "Status": "StatusAttributeMetadata",
    "DateTime": "DateTimeAttributeMetadata",
    "Integer": "IntegerAttributeMetadata",
    "BigInt": "BigIntAttributeMetadata",
    "Decimal": "DecimalAttributeMetadata",
    "Money": "MoneyAttributeMetadata",
    "Uniqueidentifier": "AttributeMetadata",
    "Lookup": "LookupAttributeMetadata",
    "Customer": "LookupAttributeMetadata",
    "Owner": "LookupAttributeMetadata",
}


def new_metadata_id() -> str:
    return str(uuid.uuid4())


ATTRIBUTE_METADATA_TYPES = frozenset(ATTRIBUTE_METADATA_TYPES_BY_COLUMN.values())


def label(text: str) -> dict[str, Any]:
    """A `Microsoft.Dynamics.CRM.Label` with one English (1033) label."""
    localized = {"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text, "LanguageCode": 1033}
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [localized],
        "UserLocalizedLabel": localized,
    }


def label_text(value: Any) -> str:
    if isinstance(value, dict):
        for localized in value.get("LocalizedLabels") or []:
            if isinstance(localized, dict) and localized.get("Label"):
                return str(localized["Label"])
    return ""


@dataclass
class ColumnDef:
    logical_name: str
    type: str
    schema_name: str = ""
    display_name: str = ""
    max_length: int | None = None
    options: dict[int, str] = field(default_factory=dict)
    default: Any = None
    date_only: bool = False
    read_only: bool = False
    custom: bool = False
    navigations: dict[str, str] = field(default_factory=dict)  # lookups: navigation property -> target table
    metadata_id: str = field(default_factory=new_metadata_id)

    @property
    def is_lookup(self) -> bool:
        return self.type in LOOKUP_TYPES

    @property
    def wire_name(self) -> str:
        """How the column reads in a record (`_parentaccountid_value` for lookups)."""
        return f"_{self.logical_name}_value" if self.is_lookup else self.logical_name

    def metadata(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "@odata.type": f"#Microsoft.Dynamics.CRM.{ATTRIBUTE_METADATA_TYPES_BY_COLUMN.get(self.type, 'AttributeMetadata')}",
            "MetadataId": self.metadata_id,
            "LogicalName": self.logical_name,
            "SchemaName": self.schema_name or self.logical_name,
            "AttributeType": self.type,
            "IsCustomAttribute": self.custom,
            "DisplayName": label(self.display_name or self.logical_name),
        }
        if self.max_length is not None:
            body["MaxLength"] = self.max_length
        if self.type == "Picklist":
            body["OptionSet"] = {
                "OptionSetType": "Picklist",
                "IsGlobal": False,
                "Options": [{"Value": value, "Label": label(text)} for value, text in sorted(self.options.items())],
            }
        if self.type == "Boolean":
            body["DefaultValue"] = bool(self.default)
        if self.type == "DateTime":
            body["Format"] = "DateOnly" if self.date_only else "DateAndTime"
        if self.is_lookup:
            body["Targets"] = sorted(set(self.navigations.values()))
        return body


@dataclass
class KeyDef:
    logical_name: str
    schema_name: str
    display_name: str
    attributes: tuple[str, ...]
    created_at: float
    metadata_id: str = field(default_factory=new_metadata_id)


@dataclass
class TableDef:
    logical_name: str
    entity_set: str
    primary_name: str
    schema_name: str = ""
    display_name: str = ""
    custom: bool = False
    ownership: str = "UserOwned"
    change_tracking: bool = False
    columns: dict[str, ColumnDef] = field(default_factory=dict)
    collections: dict[str, tuple[str, str]] = field(default_factory=dict)  # navigation -> (child table, child lookup)
    keys: dict[str, KeyDef] = field(default_factory=dict)
    metadata_id: str = field(default_factory=new_metadata_id)

    @property
    def primary_id(self) -> str:
        return "activityid" if self.logical_name == "opportunityclose" else f"{self.logical_name}id"

    @property
    def type_name(self) -> str:
        return f"Microsoft.Dynamics.CRM.{self.logical_name}"

    def add(self, column: ColumnDef) -> None:
        self.columns[column.logical_name] = column

    def navigation(self, name: str) -> tuple[ColumnDef, str] | None:
        """The lookup column and target table behind a single-valued navigation property."""
        for column in self.columns.values():
            if name in column.navigations:
                return column, column.navigations[name]
        return None

    def wire_columns(self) -> dict[str, ColumnDef]:
        return {column.wire_name: column for column in self.columns.values()}

    def states(self) -> dict[int, set[int]]:
        return STATES.get(self.logical_name, DEFAULT_STATES)


def _lookup(name: str, *targets: str, type: str = "Lookup", read_only: bool = False) -> ColumnDef:
    if type == "Owner" or len(targets) == 1:
        # An owner binds through one navigation property (`ownerid`); the sandbox owners are users.
        navigations = {name: targets[0]}
    else:
        navigations = {f"{name}_{target}": target for target in targets}
    return ColumnDef(name, type, navigations=navigations, read_only=read_only)


def _system_columns(table: TableDef, *, owned: bool = True) -> None:
    table.add(ColumnDef(table.primary_id, "Uniqueidentifier"))
    table.add(ColumnDef("createdon", "DateTime", read_only=True))
    table.add(ColumnDef("modifiedon", "DateTime", read_only=True))
    table.add(ColumnDef("versionnumber", "BigInt", read_only=True))
    table.add(_lookup("createdby", "systemuser", read_only=True))
    table.add(_lookup("modifiedby", "systemuser", read_only=True))
    table.add(ColumnDef("statecode", "State", default=0))
    table.add(ColumnDef("statuscode", "Status"))
    if owned:
        table.add(_lookup("ownerid", "systemuser", "team", type="Owner"))


def _strings(table: TableDef, *names: str, max_length: int = 100) -> None:
    for name in names:
        table.add(ColumnDef(name, "String", max_length=max_length))


_ADDRESS = ("address1_line1", "address1_city", "address1_stateorprovince", "address1_postalcode", "address1_country")


def standard_tables() -> dict[str, TableDef]:
    """The org's out-of-the-box tables the connector touches (crm-apis.md B6)."""
    tables: dict[str, TableDef] = {}

    def table(logical_name: str, entity_set: str, primary_name: str, *, owned: bool = True) -> TableDef:
        definition = TableDef(logical_name, entity_set, primary_name, schema_name=logical_name.title())
        _system_columns(definition, owned=owned)
        tables[logical_name] = definition
        return definition

    currency = table("transactioncurrency", "transactioncurrencies", "currencyname", owned=False)
    _strings(currency, "currencyname", "currencysymbol")
    _strings(currency, "isocurrencycode", max_length=5)
    currency.add(ColumnDef("exchangerate", "Decimal"))

    user = table("systemuser", "systemusers", "fullname", owned=False)
    _strings(user, "fullname", "firstname", "lastname", "domainname", "internalemailaddress", "applicationid")

    team = table("team", "teams", "name", owned=False)
    _strings(team, "name")

    account = table("account", "accounts", "name")
    _strings(account, "name", max_length=160)
    _strings(account, "accountnumber", "telephone1", "emailaddress1", "websiteurl", *_ADDRESS)
    account.add(ColumnDef("revenue", "Money"))
    account.add(ColumnDef("numberofemployees", "Integer"))
    account.add(_lookup("parentaccountid", "account"))
    account.add(_lookup("primarycontactid", "contact"))
    account.add(_lookup("transactioncurrencyid", "transactioncurrency"))

    contact = table("contact", "contacts", "fullname")
    _strings(contact, "firstname", "lastname", "emailaddress1", "telephone1", "mobilephone", "jobtitle", *_ADDRESS)
    contact.add(ColumnDef("fullname", "String", max_length=160, read_only=True))
    contact.add(_lookup("parentcustomerid", "account", "contact", type="Customer"))

    opportunity = table("opportunity", "opportunities", "name")
    _strings(opportunity, "name", max_length=300)
    _strings(opportunity, "stepname", max_length=200)
    opportunity.add(ColumnDef("description", "Memo", max_length=2000))
    for money in ("estimatedvalue", "actualvalue", "budgetamount"):
        opportunity.add(ColumnDef(money, "Money"))
    opportunity.add(ColumnDef("estimatedvalue_base", "Money", read_only=True))
    opportunity.add(ColumnDef("exchangerate", "Decimal", read_only=True))
    # DateOnly here; an org may use UserLocal instead (crm-apis.md open question 7).
    opportunity.add(ColumnDef("estimatedclosedate", "DateTime", date_only=True))
    opportunity.add(ColumnDef("actualclosedate", "DateTime", date_only=True))
    opportunity.add(ColumnDef("closeprobability", "Integer"))
    opportunity.add(ColumnDef("salesstage", "Picklist", options={0: "Qualify", 1: "Develop", 2: "Propose", 3: "Close"}))
    opportunity.add(_lookup("transactioncurrencyid", "transactioncurrency"))
    opportunity.add(_lookup("customerid", "account", "contact", type="Customer"))
    opportunity.add(_lookup("parentaccountid", "account"))
    opportunity.add(_lookup("parentcontactid", "contact"))
    opportunity.add(_lookup("originatingleadid", "lead"))

    lead = table("lead", "leads", "subject")
    _strings(lead, "subject", max_length=300)
    _strings(lead, "firstname", "lastname", "emailaddress1", "telephone1", "jobtitle", *_ADDRESS)
    _strings(lead, "companyname", max_length=100)
    lead.add(ColumnDef("fullname", "String", max_length=160, read_only=True))
    lead.add(ColumnDef("description", "Memo", max_length=2000))
    lead.add(ColumnDef("estimatedamount", "Money"))
    lead.add(ColumnDef("estimatedclosedate", "DateTime", date_only=True))
    lead.add(ColumnDef("leadsourcecode", "Picklist", options={1: "Advertisement", 8: "Web", 10: "Other"}))
    lead.add(_lookup("transactioncurrencyid", "transactioncurrency"))
    lead.add(_lookup("parentaccountid", "account"))
    lead.add(_lookup("parentcontactid", "contact"))
    lead.add(_lookup("qualifyingopportunityid", "opportunity"))

    role = table("connectionrole", "connectionroles", "name", owned=False)
    _strings(role, "name")
    role.add(ColumnDef("category", "Picklist", options={1: "Business", 2: "Family", 3: "Social", 4: "Sales"}))

    connection = table("connection", "connections", "name")
    _strings(connection, "name", max_length=500)
    connection.add(_lookup("record1id", "opportunity", "account", "contact", "lead"))
    connection.add(_lookup("record2id", "contact", "account", "opportunity", "lead"))
    connection.add(_lookup("record1roleid", "connectionrole"))
    connection.add(_lookup("record2roleid", "connectionrole"))

    close = table("opportunityclose", "opportunitycloses", "subject")
    _strings(close, "subject", max_length=200)
    close.add(ColumnDef("actualrevenue", "Money"))
    close.add(ColumnDef("actualend", "DateTime", date_only=True))
    close.add(_lookup("opportunityid", "opportunity"))

    for publisher_like in ("publisher", "solution"):
        definition = table(publisher_like, f"{publisher_like}s", "friendlyname", owned=False)
        _strings(definition, "uniquename", "friendlyname")
    _strings(tables["publisher"], "customizationprefix", max_length=8)
    tables["publisher"].add(ColumnDef("customizationoptionvalueprefix", "Integer"))
    _strings(tables["solution"], "version", max_length=20)
    tables["solution"].add(_lookup("publisherid", "publisher"))

    tables["account"].collections.update(
        {
            "contact_customer_accounts": ("contact", "parentcustomerid"),
            "opportunity_parent_account": ("opportunity", "parentaccountid"),
            "opportunity_customer_accounts": ("opportunity", "customerid"),
        }
    )
    tables["opportunity"].collections["opportunity_connections1"] = ("connection", "record1id")
    tables["lead"].collections["lead_connections1"] = ("connection", "record1id")
    tables["opportunity"].collections["Opportunity_OpportunityClose"] = ("opportunityclose", "opportunityid")
    return tables


# ---- the connector's schema --------------------------------------------------------------------------
def column_from_schema(column: Column) -> ColumnDef:
    return ColumnDef(
        column.logical_name,
        column.type,
        schema_name=column.schema_name,
        display_name=column.display_name,
        max_length=column.max_length,
        options={option.value: option.label for option in column.options},
        default=column.default,
        custom=True,
    )


def custom_table(
    logical_name: str, schema_name: str, entity_set: str, display_name: str, ownership: str, primary: ColumnDef
) -> TableDef:
    definition = TableDef(
        logical_name,
        entity_set,
        primary.logical_name,
        schema_name=schema_name,
        display_name=display_name,
        custom=True,
        ownership=ownership,
    )
    _system_columns(definition, owned=ownership == "UserOwned")
    definition.add(primary)
    return definition


def add_lookup(tables: dict[str, TableDef], child: str, lookup: Lookup) -> None:
    """A 1:N relationship: the lookup on the child and the collection navigation on the parent."""
    column = ColumnDef(
        lookup.logical_name,
        "Lookup",
        schema_name=lookup.schema_name,
        display_name=lookup.display_name,
        custom=True,
        navigations={lookup.navigation_property: lookup.target},
    )
    tables[child].add(column)
    tables[lookup.target].collections[lookup.collection_navigation_property] = (child, lookup.logical_name)


def apply_schema(tables: dict[str, TableDef], schema: DataverseSchema, created_at: float) -> None:
    """Install the connector's schema directly (a pre-provisioned org)."""
    for table in schema.tables:
        if not table.standard:
            assert table.primary_name and table.schema_name and table.entity_set_name  # validated by the schema
            primary = ColumnDef(
                table.primary_name.logical_name,
                "String",
                schema_name=table.primary_name.schema_name,
                display_name=table.primary_name.display_name,
                max_length=table.primary_name.max_length,
                custom=True,
            )
            tables[table.logical_name] = custom_table(
                table.logical_name,
                table.schema_name,
                table.entity_set_name,
                table.display_name or table.logical_name,
                table.ownership_type,
                primary,
            )
    for table in schema.tables:
        _apply_table(tables, table, created_at)


def _apply_table(tables: dict[str, TableDef], table: Table, created_at: float) -> None:
    definition = tables[table.logical_name]
    for column in table.columns:
        definition.add(column_from_schema(column))
    for lookup in table.lookups:
        add_lookup(tables, table.logical_name, lookup)
    for key in table.keys:
        # Pre-provisioned keys are already built (index status Active).
        definition.keys[key.logical_name] = KeyDef(
            key.logical_name, key.schema_name, key.display_name, key.key_attributes, created_at - 3600
        )
