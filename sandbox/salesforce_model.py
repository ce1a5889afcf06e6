"""The Salesforce simulator's data model: object and field definitions, ids, and value checks.

Standard objects carry the fields our adapter and ordinary integrations use (crm-apis.md A4).
Custom objects and fields come from `crm_schema/salesforce` (see `shared/crm/salesforce_schema.py`)
or from Tooling API calls, so the simulator enforces exactly the schema we ship.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from shared.crm.salesforce_schema import DESCRIBE_TYPES, FieldSpec, ObjectSpec

JsonDict = dict[str, Any]

_DESCRIBE_LENGTHS = {"url": 255, "email": 80, "phone": 40}


class SalesforceApiError(Exception):
    """A REST error exactly as Salesforce sends it: a JSON list of {message, errorCode, fields}."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []

    def body(self) -> list[JsonDict]:
        entry: JsonDict = {"message": self.message, "errorCode": self.code}
        if self.fields:
            entry["fields"] = self.fields
        return [entry]

    def collection_error(self) -> JsonDict:
        """The shape used inside composite/collections results (`statusCode`, not `errorCode`)."""
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}


@dataclass
class FieldDef:
    name: str
    type: str  # describe type: id, string, boolean, textarea, url, email, phone, picklist, reference, date, datetime, currency, double, percent, int
    label: str = ""
    length: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    required: bool = False  # required on create (and may not be set to null)
    default: Any = None
    picklist: list[str] = field(default_factory=list)
    restricted: bool = False
    reference_to: list[str] = field(default_factory=list)
    relationship_name: str | None = None
    child_relationship_name: str | None = None  # custom lookups: the parent's name for the children
    external_id: bool = False
    unique: bool = False
    custom: bool = False
    calculated: bool = False
    extra_type_info: str | None = None
    description: str = ""

    def describe(self) -> JsonDict:
        return {
            "name": self.name,
            "label": self.label or self.name,
            "type": self.type,
            "length": self.length,
            "nillable": self.nillable and not self.required,
            "createable": self.createable,
            "updateable": self.updateable,
            "custom": self.custom,
            "calculated": self.calculated,
            "externalId": self.external_id,
            "unique": self.unique,
            "idLookup": self.name == "Id" or self.external_id,
            "defaultedOnCreate": self.default is not None or self.type == "boolean",
            "defaultValue": self.default if self.type == "boolean" else None,
            "picklistValues": [
                {"value": value, "label": value, "active": True, "defaultValue": False, "validFor": None}
                for value in self.picklist
            ],
            "restrictedPicklist": self.restricted,
            "referenceTo": self.reference_to,
            "relationshipName": self.relationship_name,
            "extraTypeInfo": self.extra_type_info,
            "inlineHelpText": self.description or None,
            "soapType": _SOAP_TYPES.get(self.type, "xsd:string"),
        }


_SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
    "currency": "xsd:double",
    "double": "xsd:double",
    "percent": "xsd:double",
    "int": "xsd:int",
}


@dataclass
class ChildRelationship:
    name: str
    child_object: str
    field: str
    cascade_delete: bool = False


@dataclass
class ObjectDef:
    name: str
    key_prefix: str
    label: str = ""
    plural_label: str = ""
    custom: bool = False
    createable: bool = True
    updateable: bool = True
    deletable: bool = True
    fields: dict[str, FieldDef] = field(default_factory=dict)  # by lower-case name
    child_relationships: list[ChildRelationship] = field(default_factory=list)

    def add(self, definition: FieldDef) -> None:
        self.fields[definition.name.lower()] = definition

    def field(self, name: str) -> FieldDef | None:
        return self.fields.get(name.lower())

    def relationship(self, name: str) -> FieldDef | None:
        lowered = name.lower()
        return next(
            (f for f in self.fields.values() if f.relationship_name and f.relationship_name.lower() == lowered), None
        )

    def child_relationship(self, name: str) -> ChildRelationship | None:
        lowered = name.lower()
        return next((child for child in self.child_relationships if child.name.lower() == lowered), None)

    def summary(self, version: str) -> JsonDict:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {
            "name": self.name,
            "label": self.label or self.name,
            "labelPlural": self.plural_label or self.label or self.name,
            "keyPrefix": self.key_prefix,
            "custom": self.custom,
            "createable": self.createable,
            "updateable": self.updateable,
            "deletable": self.deletable,
            "queryable": True,
            "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
        }

    def describe(self, version: str) -> JsonDict:
        return {
            **self.summary(version),
            "fields": [definition.describe() for definition in self.fields.values()],
            "childRelationships": [
                {
                    "childSObject": child.child_object,
                    "field": child.field,
                    "relationshipName": child.name,
                    "cascadeDelete": child.cascade_delete,
                }
                for child in self.child_relationships
            ],
        }


# ---- ids --------------------------------------------------------------------------------------------
_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKSUM_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_PATTERN = re.compile(r"^[a-zA-Z0-9]{15}([a-zA-Z0-9]{3})?$")


def id_checksum(id15: str) -> str:
    """Salesforce's 3-character case-safety suffix of a 15-character id."""
    suffix = ""
    for chunk in range(3):
        bits = sum(1 << position for position, char in enumerate(id15[chunk * 5 : chunk * 5 + 5]) if char.isupper())
        suffix += _CHECKSUM_ALPHABET[bits]
    return suffix


class IdFactory:
    """Sequential 18-character ids with the object's key prefix (pod "5g" like a real org)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def new(self, key_prefix: str) -> str:
        number = next(self._counter)
        digits = ""
        for _ in range(10):
            number, remainder = divmod(number, 62)
            digits = _ID_ALPHABET[remainder] + digits
        id15 = f"{key_prefix}5g{digits}"
        return id15 + id_checksum(id15)


def normalize_id(value: str, field_name: str = "Id") -> str:
    """The 18-character form of a 15- or 18-character id, or MALFORMED_ID."""
    if not isinstance(value, str) or not _ID_PATTERN.match(value):
        raise SalesforceApiError(
            400, "MALFORMED_ID", f"{field_name}: id value of incorrect type: {value}", [field_name]
        )
    return value if len(value) == 18 else value + id_checksum(value)


# ---- value formats ------------------------------------------------------------------------------------
def format_datetime(value: dt.datetime) -> str:
    """Salesforce's wire format: 2024-05-20T20:49:32.000+0000."""
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def parse_datetime_value(value: str) -> dt.datetime:
    text = value.strip()
    if re.fullmatch(r".*[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def coerce(definition: FieldDef, value: Any, object_name: str) -> Any:
    """The stored form of a written value, or the error Salesforce sends for it."""
    if value is None:
        return None

    def refuse() -> SalesforceApiError:
        return SalesforceApiError(
            400,
            "JSON_PARSER_ERROR",
            f"Cannot deserialize instance of {definition.type} from {type(value).__name__} value {value!r} "
            f"or request may be missing a required field at [{definition.name}]",
            [definition.name],
        )

    kind = definition.type
    if kind == "boolean":
        if not isinstance(value, bool):
            raise refuse()
        return value
    if kind in ("currency", "double", "percent", "int"):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise refuse()
        try:
            return float(Decimal(str(value)))
        except InvalidOperation:
            raise refuse() from None
    if kind == "date":
        try:
            return dt.date.fromisoformat(str(value)[:10]).isoformat()
        except ValueError:
            raise refuse() from None
    if kind == "datetime":
        try:
            return format_datetime(parse_datetime_value(str(value)))
        except ValueError:
            raise refuse() from None
    if kind in ("reference", "id"):
        return normalize_id(str(value), definition.name)
    if not isinstance(value, str):
        if isinstance(value, bool | dict | list):
            raise refuse()
        value = str(value)
    if definition.length and len(value) > definition.length:
        raise SalesforceApiError(
            400,
            "STRING_TOO_LONG",
            f"{definition.label or definition.name}: data value too large: {value[:40]!r} (max length={definition.length})",
            [definition.name],
        )
    if kind == "picklist" and definition.restricted and value not in definition.picklist:
        raise SalesforceApiError(
            400,
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            f"{definition.label or definition.name}: bad value for restricted picklist field: {value}",
            [definition.name],
        )
    if kind == "email" and value and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
        raise SalesforceApiError(
            400,
            "INVALID_EMAIL_ADDRESS",
            f"{definition.label or definition.name}: invalid email address: {value}",
            [definition.name],
        )
    return value


# ---- object definitions ---------------------------------------------------------------------------------
def _f(name: str, kind: str, **options: Any) -> FieldDef:
    options.setdefault("label", re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name.removesuffix("Id")) or name)
    if kind == "string" and "length" not in options:
        options["length"] = 255
    return FieldDef(name=name, type=kind, **options)


def _read_only(name: str, kind: str, **options: Any) -> FieldDef:
    return _f(name, kind, createable=False, updateable=False, **options)


def _user_ref(name: str, relationship: str, *, writable: bool = False) -> FieldDef:
    return _f(
        name,
        "reference",
        reference_to=["User"],
        relationship_name=relationship,
        createable=writable,
        updateable=writable,
        length=18,
    )


def _system_fields() -> list[FieldDef]:
    return [
        _read_only("Id", "id", length=18, nillable=False),
        _read_only("IsDeleted", "boolean", nillable=False),
        _read_only("CreatedDate", "datetime", nillable=False),
        _user_ref("CreatedById", "CreatedBy"),
        _read_only("LastModifiedDate", "datetime", nillable=False),
        _user_ref("LastModifiedById", "LastModifiedBy"),
        _read_only("SystemModstamp", "datetime", nillable=False),
    ]


def _lookup(name: str, target: str, relationship: str, **options: Any) -> FieldDef:
    return _f(name, "reference", reference_to=[target], relationship_name=relationship, length=18, **options)


def _object(name: str, prefix: str, fields: list[FieldDef], *, owner: bool = True, **options: Any) -> ObjectDef:
    definition = ObjectDef(name=name, key_prefix=prefix, label=options.pop("label", name), **options)
    for item in _system_fields() + ([_user_ref("OwnerId", "Owner", writable=True)] if owner else []) + fields:
        definition.add(item)
    return definition


OPPORTUNITY_STAGES: list[JsonDict] = [
    # ApiName, IsClosed, IsWon, DefaultProbability, ForecastCategoryName (a standard org's defaults)
    {
        "ApiName": "Prospecting",
        "IsClosed": False,
        "IsWon": False,
        "DefaultProbability": 10,
        "ForecastCategoryName": "Pipeline",
    },
    {
        "ApiName": "Qualification",
        "IsClosed": False,
        "IsWon": False,
        "DefaultProbability": 10,
        "ForecastCategoryName": "Pipeline",
    },
    {
        "ApiName": "Needs Analysis",
        "IsClosed": False,
        "IsWon": False,
        "DefaultProbability": 20,
        "ForecastCategoryName": "Pipeline",
    },
    {
        "ApiName": "Value Proposition",
        "IsClosed": False,
        "IsWon": False,
        "DefaultProbability": 50,
        "ForecastCategoryName": "Pipeline",
    },
    {
        "ApiName": "Id. Decision Makers",
        "IsClosed": False,
        "IsWon": False,
        "DefaultProbability": 60,
        "ForecastCategoryName": "Pipeline",
    },
    {
        "ApiName": "Perception Analysis",
        "IsClosed": False,
        "IsWon": False,
        "DefaultProbability": 70,
        "ForecastCategoryName": "Pipeline",
    },
    {
        "ApiName": "Proposal/Price Quote",
        "IsClosed": False,
        "IsWon": False,
        "DefaultProbability": 75,
        "ForecastCategoryName": "Pipeline",
    },
    {
        "ApiName": "Negotiation/Review",
        "IsClosed": False,
        "IsWon": False,
        "DefaultProbability": 90,
        "ForecastCategoryName": "Pipeline",
    },
    {
        "ApiName": "Closed Won",
        "IsClosed": True,
        "IsWon": True,
        "DefaultProbability": 100,
        "ForecastCategoryName": "Closed",
    },
    {
        "ApiName": "Closed Lost",
        "IsClosed": True,
        "IsWon": False,
        "DefaultProbability": 0,
        "ForecastCategoryName": "Omitted",
    },
]
LEAD_STATUSES: list[JsonDict] = [
    {"ApiName": "Open - Not Contacted", "IsConverted": False, "IsDefault": True},
    {"ApiName": "Working - Contacted", "IsConverted": False, "IsDefault": False},
    {"ApiName": "Closed - Converted", "IsConverted": True, "IsDefault": False},
    {"ApiName": "Closed - Not Converted", "IsConverted": False, "IsDefault": False},
]
CONTACT_ROLES = [
    "Business User",
    "Decision Maker",
    "Economic Buyer",
    "Economic Decision Maker",
    "Evaluator",
    "Executive Sponsor",
    "Influencer",
    "Technical Buyer",
    "Other",
]


def standard_objects(*, multi_currency: bool = False) -> dict[str, ObjectDef]:
    """A fresh org's standard objects (before our schema is provisioned)."""
    address = [
        _f("BillingStreet", "textarea", length=255),
        _f("BillingCity", "string", length=40),
        _f("BillingState", "string", length=80),
        _f("BillingPostalCode", "string", length=20),
        _f("BillingCountry", "string", length=80),
    ]
    lead_address = [
        _f("Street", "textarea", length=255),
        _f("City", "string", length=40),
        _f("State", "string", length=80),
        _f("PostalCode", "string", length=20),
        _f("Country", "string", length=80),
    ]
    currency = [_f("CurrencyIsoCode", "picklist", length=3, picklist=["USD", "EUR", "GBP", "SEK"], restricted=True)]
    objects = [
        _object(
            "User",
            "005",
            [
                _f("Username", "string", length=80, required=True),
                _f("FirstName", "string", length=40),
                _f("LastName", "string", length=80, required=True),
                _read_only("Name", "string", length=121, calculated=True),
                _f("Email", "email", length=80, required=True),
                _f("IsActive", "boolean", default=True),
            ],
            owner=False,
            createable=False,
        ),
        _object(
            "Account",
            "001",
            [
                _f("Name", "string", required=True),
                *address,
                _f("Phone", "phone", length=40),
                _f("Website", "url", length=255),
            ]
            + _f_list(["Type", "Industry"], "picklist")
            + (currency if multi_currency else []),
        ),
        _object(
            "Contact",
            "003",
            [
                _f("FirstName", "string", length=40),
                _f("LastName", "string", length=80, required=True),
                _read_only("Name", "string", length=121, calculated=True),
                _f("Email", "email", length=80),
                _f("Phone", "phone", length=40),
                _f("Title", "string", length=128),
                _lookup("AccountId", "Account", "Account"),
            ],
        ),
        _object(
            "Opportunity",
            "006",
            [
                _f("Name", "string", length=120, required=True),
                _lookup("AccountId", "Account", "Account"),
                _f(
                    "StageName",
                    "picklist",
                    length=255,
                    required=True,
                    picklist=[stage["ApiName"] for stage in OPPORTUNITY_STAGES],
                    restricted=True,
                    label="Stage",
                ),
                _f("CloseDate", "date", required=True),
                _f("Amount", "currency"),
                _f("Probability", "percent"),
                _f("Description", "textarea", length=32000),
                _f("NextStep", "string", length=255),
                _f("Type", "picklist", picklist=["Existing Customer - Upgrade", "New Customer"]),
                _f("LeadSource", "picklist", picklist=["Web", "Partner Referral", "Other"]),
                _read_only("IsClosed", "boolean", calculated=True),
                _read_only("IsWon", "boolean", calculated=True),
                _read_only("ForecastCategoryName", "picklist"),
            ]
            + (currency if multi_currency else []),
        ),
        _object(
            "Lead",
            "00Q",
            [
                _f("FirstName", "string", length=40),
                _f("LastName", "string", length=80, required=True),
                _read_only("Name", "string", length=121, calculated=True),
                _f("Company", "string", length=255, required=True),
                _f(
                    "Status",
                    "picklist",
                    required=True,
                    picklist=[status["ApiName"] for status in LEAD_STATUSES],
                    restricted=True,
                    default="Open - Not Contacted",
                ),
                _f("Email", "email", length=80),
                _f("Phone", "phone", length=40),
                _f("Title", "string", length=128),
                *lead_address,
                _f("Description", "textarea", length=32000),
                _f("LeadSource", "picklist", picklist=["Web", "Partner Referral", "Other"]),
                _read_only("IsConverted", "boolean"),
                _read_only("ConvertedDate", "date"),
                _read_only(
                    "ConvertedAccountId", "reference", reference_to=["Account"], relationship_name="ConvertedAccount"
                ),
                _read_only(
                    "ConvertedContactId", "reference", reference_to=["Contact"], relationship_name="ConvertedContact"
                ),
                _read_only(
                    "ConvertedOpportunityId",
                    "reference",
                    reference_to=["Opportunity"],
                    relationship_name="ConvertedOpportunity",
                ),
            ],
        ),
        _object(
            "OpportunityContactRole",
            "00K",
            [
                _lookup("OpportunityId", "Opportunity", "Opportunity", required=True, updateable=False),
                _lookup("ContactId", "Contact", "Contact", required=True),
                _f("Role", "picklist", picklist=CONTACT_ROLES),
                _f("IsPrimary", "boolean", default=False),
            ],
            owner=False,
        ),
        _object(
            "OpportunityStage",
            "01J",
            [
                _read_only("ApiName", "string"),
                _read_only("MasterLabel", "string"),
                _read_only("IsActive", "boolean"),
                _read_only("IsClosed", "boolean"),
                _read_only("IsWon", "boolean"),
                _read_only("DefaultProbability", "percent"),
                _read_only("ForecastCategoryName", "string"),
                _read_only("SortOrder", "int"),
            ],
            owner=False,
            createable=False,
            updateable=False,
            deletable=False,
        ),
        _object(
            "LeadStatus",
            "01J",
            [
                _read_only("ApiName", "string"),
                _read_only("MasterLabel", "string"),
                _read_only("IsConverted", "boolean"),
                _read_only("IsDefault", "boolean"),
                _read_only("SortOrder", "int"),
            ],
            owner=False,
            createable=False,
            updateable=False,
            deletable=False,
        ),
        _object(
            "PermissionSet",
            "0PS",
            [
                _f("Name", "string", length=80, required=True),
                _f("Label", "string", length=80, required=True),
                _f("Description", "string"),
            ],
            owner=False,
        ),
        _object(
            "FieldPermissions",
            "01k",
            [
                _lookup("ParentId", "PermissionSet", "Parent", required=True, updateable=False),
                _f("SobjectType", "string", length=80, required=True, updateable=False),
                _f("Field", "string", length=255, required=True, updateable=False),
                _f("PermissionsRead", "boolean", default=False),
                _f("PermissionsEdit", "boolean", default=False),
            ],
            owner=False,
        ),
        _object(
            "ObjectPermissions",
            "110",
            [
                _lookup("ParentId", "PermissionSet", "Parent", required=True, updateable=False),
                _f("SobjectType", "string", length=80, required=True, updateable=False),
                *[
                    _f(name, "boolean", default=False)
                    for name in (
                        "PermissionsRead",
                        "PermissionsCreate",
                        "PermissionsEdit",
                        "PermissionsDelete",
                        "PermissionsViewAllRecords",
                        "PermissionsModifyAllRecords",
                    )
                ],
            ],
            owner=False,
        ),
        _object(
            "PermissionSetAssignment",
            "0Pa",
            [
                _lookup("AssigneeId", "User", "Assignee", required=True, updateable=False),
                _lookup("PermissionSetId", "PermissionSet", "PermissionSet", required=True, updateable=False),
            ],
            owner=False,
        ),
    ]
    by_name = {definition.name: definition for definition in objects}
    _link_children(by_name)
    return by_name


def _f_list(names: list[str], kind: str) -> list[FieldDef]:
    return [_f(name, kind) for name in names]


_STANDARD_CHILD_NAMES = {
    ("OpportunityContactRole", "OpportunityId"): ("OpportunityContactRoles", True),
    ("Contact", "AccountId"): ("Contacts", False),
    ("Opportunity", "AccountId"): ("Opportunities", False),
    ("FieldPermissions", "ParentId"): ("FieldPerms", True),
    ("ObjectPermissions", "ParentId"): ("ObjectPerms", True),
    ("PermissionSetAssignment", "PermissionSetId"): ("Assignments", True),
}


def _link_children(objects: dict[str, ObjectDef]) -> None:
    """(Re)build every parent's child relationships from the children's lookups."""
    for definition in objects.values():
        definition.child_relationships = []
    for child in objects.values():
        for item in child.fields.values():
            if (
                item.type != "reference"
                or not item.reference_to
                or item.name in ("CreatedById", "LastModifiedById", "OwnerId")
            ):
                continue
            parent = objects.get(item.reference_to[0])
            if parent is None:
                continue
            standard = _STANDARD_CHILD_NAMES.get((child.name, item.name))
            if standard:
                name, cascade = standard
            elif item.custom and item.child_relationship_name:
                name, cascade = item.child_relationship_name, False
            else:
                continue
            parent.child_relationships.append(ChildRelationship(name, child.name, item.name, cascade))


def field_from_spec(spec: FieldSpec) -> FieldDef:
    """A custom field as Salesforce materialises it from metadata (Checkbox defaults to false)."""
    kind = DESCRIBE_TYPES.get(spec.type)
    if kind is None:
        raise SalesforceApiError(400, "FIELD_INTEGRITY_EXCEPTION", f"Unsupported field type: {spec.type}", ["type"])
    length = spec.length or _DESCRIBE_LENGTHS.get(kind, 18 if kind == "reference" else 0)
    return FieldDef(
        name=spec.name,
        type=kind,
        label=spec.label,
        length=length,
        required=spec.required or spec.type == "MasterDetail",
        default=(spec.default_value or "false").lower() == "true" if kind == "boolean" else None,
        picklist=list(spec.picklist_values),
        restricted=spec.restricted_picklist,
        reference_to=[spec.reference_to] if spec.reference_to else [],
        relationship_name=spec.name.removesuffix("__c") + "__r" if spec.reference_to else None,
        child_relationship_name=(spec.relationship_name + "__r") if spec.relationship_name else None,
        external_id=spec.external_id,
        unique=spec.unique,
        custom=True,
        extra_type_info="plaintextarea" if spec.type in ("TextArea", "LongTextArea") else None,
        description=spec.description,
    )


def apply_object_spec(objects: dict[str, ObjectDef], spec: ObjectSpec, prefixes: itertools.count[int]) -> None:
    """Create the custom object (if new) and every field of `spec` in `objects`."""
    if spec.name not in objects:
        add_custom_object(objects, spec, prefixes)
    for item in spec.fields:
        add_custom_field(objects, item)


def add_custom_object(objects: dict[str, ObjectDef], spec: ObjectSpec, prefixes: itertools.count[int]) -> ObjectDef:
    definition = _object(
        spec.name,
        f"a{next(prefixes):02d}",
        [_f("Name", "string", length=80, required=True, label=spec.name_field_label)],
        label=spec.label,
        plural_label=spec.plural_label,
        custom=True,
    )
    objects[spec.name] = definition
    return definition


def add_custom_field(objects: dict[str, ObjectDef], spec: FieldSpec) -> FieldDef:
    target = objects.get(spec.object_name)
    if target is None:
        raise SalesforceApiError(400, "INVALID_TYPE", f"sObject type '{spec.object_name}' is not supported.")
    if spec.reference_to and spec.reference_to not in objects:
        raise SalesforceApiError(
            400, "FIELD_INTEGRITY_EXCEPTION", f"referenceTo: no such object {spec.reference_to}", ["referenceTo"]
        )
    definition = field_from_spec(spec)
    target.add(definition)
    _link_children(objects)
    return definition
