"""The sandbox Dataverse Web API (crm-apis.md part B), served at `https://127.0.0.1:7103/api/data/v9.2/`.

Behaviour follows the reference, not our adapter:
- bearer tokens from the sandbox identity provider, audience = the org URL; the caller is the
  application user whose `applicationid` is the token's `appid` (401 / 403 otherwise);
- entity sets for account, contact, opportunity, lead, transactioncurrency, systemuser, connection,
  publisher, solution and the connector's tables from `crm_schema/dynamics`;
- OData `$select/$filter/$orderby/$top/$expand/$count`, paging with `Prefer: odata.maxpagesize` and
  `@odata.nextLink` (`$top` ignored when a page size is set), change tracking with delta links;
- create 204 + `OData-EntityId` (201 + body with `Prefer: return=representation`); PATCH is an upsert
  unless `If-Match` (`*` -> 404 when missing; an etag -> 412 when stale) or `If-None-Match: *`
  (412 when it exists); alternate keys `opportunities(pcs_referralid='...')`; `@odata.bind`;
- `WinOpportunity` / `LoseOpportunity` / `QualifyLead`; `$batch` with change sets;
- `modifiedon` (second-granular, like the payloads) and `_modifiedby_value` kept on every write;
- error bodies `{"error": {"code", "message"}}` with Dataverse's codes; 429 / 503 from fault
  injection carry Dataverse's service-protection body;
- the metadata endpoints the provisioning command uses (EntityDefinitions, Attributes, Keys,
  RelationshipDefinitions, PublishXml).

Extra control routes (besides the framework's): `POST /_sandbox/demo-data` seeds the demo org;
`POST /_sandbox/seller/{entity_set}` and `PATCH /_sandbox/seller/{entity_set}/{id}` write as the
demo seller (a human user), so the poller sees a change that is not the integration's own;
likewise `DELETE /_sandbox/seller/{entity_set}/{id}`, `POST /_sandbox/seller/actions/WinOpportunity`
and `.../LoseOpportunity` (body as the Web API actions) and
`POST /_sandbox/seller/{entity_set}/{id}/QualifyLead` (body as the bound action), since the token
of the Web API is always the application user's.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from sandbox import credentials
from sandbox.dataverse_batch import BatchRequest, ChangeSet, PartResponse, format_batch, parse_batch
from sandbox.dataverse_tables import (
    ATTRIBUTE_METADATA_TYPES,
    LOOKUP_TYPES,
    ColumnDef,
    KeyDef,
    TableDef,
    apply_schema,
    custom_table,
    label,
    label_text,
    new_metadata_id,
    standard_tables,
)
from sandbox.odata import (
    QUERY_ERROR_CODE,
    ODataError,
    QueryOptions,
    evaluate,
    parse_datetime,
    parse_options,
    properties_of,
    query_error,
    sort_key,
    split_top_level,
)
from sandbox.server import Handler, JsonDict, Request, Response, Simulator, empty_response, json_response, route
from shared.crm.dynamics_schema import load_schema

API = "/api/data/v9.2"
NOT_FOUND_CODE = "0x80040217"
DUPLICATE_CODE = "0x80040237"
CONCURRENCY_CODE = "0x80060882"
VALIDATION_CODE = "0x80044331"
INVALID_ARGUMENT_CODE = "0x80040203"
MAX_PAGE_SIZE = 5000
# The query options each kind of resource implements; any other one (`fetchXml`, `sql`, `$apply`,
# `$search`, `$skip`, parameter aliases...) is refused with the 400 Dataverse gives an unknown one.
RECORD_OPTIONS = ("$select", "$expand")
LIST_OPTIONS = ("$select", "$expand", "$filter", "$orderby", "$top", "$count", "$skiptoken", "$deltatoken")
METADATA_LIST_OPTIONS = ("$select", "$expand", "$filter")
KEY_BUILD_SECONDS = 0.3  # alternate-key indexes build asynchronously: Pending, then Active

# Service-protection bodies (crm-apis.md B4) for injected faults.
_FAULT_BODIES = {
    429: ("0x80072322", "Number of requests exceeded the limit of 6000 over time window of 300 seconds."),
    503: ("0x80040216", "The service is temporarily unavailable. Please retry."),
}

SELLER_USER_ID = "5e11e400-0000-4000-8000-000000000001"
APPLICATION_USER_ID = "a9911ca7-0000-4000-8000-000000000002"
BASE_CURRENCY_ID = "c0000000-0000-4000-8000-000000000840"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(moment: dt.datetime) -> str:
    """Dataverse's wire format: UTC, whole seconds (`2016-09-28T23:14:00Z`)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response(status, {"error": {"code": code, "message": message}}, headers)


@dataclass
class Caller:
    user_id: str


@dataclass
class Tombstone:
    table: str
    record_id: str
    version: int


ApiHandler = Callable[["DataverseSimulator", Request, Caller], Response]


def api(handler: ApiHandler) -> Handler:
    """Authenticate the caller, then run the handler; `ODataError` becomes Dataverse's error body."""

    @functools.wraps(handler)
    def wrapper(simulator: Simulator, request: Request) -> Response:
        assert isinstance(simulator, DataverseSimulator)
        try:
            caller = simulator.authenticate(request)
            with simulator.lock:
                return handler(simulator, request, caller)
        except ODataError as error:
            headers = {"WWW-Authenticate": simulator.www_authenticate()} if error.status == 401 else None
            return error_response(error.status, error.code, error.message, headers)

    return wrapper


def control(handler: Callable[[DataverseSimulator, Request], Response]) -> Handler:
    """A `/_sandbox/` control route: no token needed; `ODataError` becomes Dataverse's error body."""

    @functools.wraps(handler)
    def wrapper(simulator: Simulator, request: Request) -> Response:
        assert isinstance(simulator, DataverseSimulator)
        try:
            with simulator.lock:
                return handler(simulator, request)
        except ODataError as error:
            return error_response(error.status, error.code, error.message)

    return wrapper


def _parse_prefer(request: Request) -> dict[str, str]:
    preferences: dict[str, str] = {}
    for item in split_top_level(request.header("prefer") or "", ","):
        name, _, value = item.partition("=")
        preferences[name.strip().lower()] = value.strip().strip('"')
    return preferences


def _parse_key(segment: str, table: TableDef) -> dict[str, Any]:
    """`<guid>` or `name='value',other=1` -> {column: value} (strings unquoted, doubled quotes undone)."""
    text = unquote(segment)
    if re.fullmatch(r"[0-9a-fA-F-]{36}", text):
        return {table.primary_id: text.lower()}
    values: dict[str, Any] = {}
    for pair in split_top_level(text, ","):
        name, equals, raw = pair.partition("=")
        if not equals:
            raise query_error(f"Bad Request - Error in query syntax: invalid key '{text}'.")
        raw = raw.strip()
        if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
            values[name.strip()] = raw[1:-1].replace("''", "'")
        elif re.fullmatch(r"[0-9a-fA-F-]{36}", raw):
            values[name.strip()] = raw.lower()
        else:
            try:
                values[name.strip()] = Decimal(raw)
            except ArithmeticError as error:
                raise query_error(f"Bad Request - Error in query syntax: invalid key value {raw!r}.") from error
    return values


class DataverseSimulator(Simulator):
    name = "dataverse"

    def __init__(self, base_url: str = "", *, provisioned: bool = True, demo_data: bool = False) -> None:
        self.provisioned = provisioned
        self.demo_data = demo_data
        super().__init__(base_url)

    # ---- records ---------------------------------------------------------------------------------
    def reset_records(self) -> None:
        self.tables: dict[str, TableDef] = standard_tables()
        if self.provisioned:
            apply_schema(self.tables, load_schema(), time.monotonic())
        self.records: dict[str, dict[str, JsonDict]] = {name: {} for name in self.tables}
        self.tombstones: list[Tombstone] = []
        self.relationships: dict[str, JsonDict] = {}
        self.publishes: list[str] = []
        self.version = 1_000_000
        self.clock: Callable[[], dt.datetime] = _now
        self._seed_org()
        if self.demo_data:
            seed_demo_data(self)

    def _seed_org(self) -> None:
        system = Caller(APPLICATION_USER_ID)
        for currency_id, code, name, symbol in (
            (BASE_CURRENCY_ID, "USD", "US Dollar", "$"),
            ("c0000000-0000-4000-8000-000000000978", "EUR", "Euro", "€"),
            ("c0000000-0000-4000-8000-000000000826", "GBP", "Pound Sterling", "£"),
        ):
            self.insert(
                "transactioncurrency",
                {"isocurrencycode": code, "currencyname": name, "currencysymbol": symbol, "exchangerate": 1},
                system,
                record_id=currency_id,
            )
        self.insert(
            "systemuser",
            {
                "fullname": "# Co-sell Sync",
                "applicationid": credentials.DATAVERSE_CLIENT_ID,
                "domainname": "cosellsync@sandbox.example",
            },
            system,
            record_id=APPLICATION_USER_ID,
        )
        self.insert(
            "systemuser",
            {
                "fullname": "Dana Seller",
                "firstname": "Dana",
                "lastname": "Seller",
                "internalemailaddress": "dana.seller@sandbox.example",
            },
            system,
            record_id=SELLER_USER_ID,
        )
        self.insert("connectionrole", {"name": "Stakeholder", "category": 4}, system)

    def state(self) -> JsonDict:
        return {
            "records": {
                self.tables[name].entity_set: list(rows.values()) for name, rows in self.records.items() if rows
            },
            "tables": {
                name: {
                    "columns": sorted(table.columns),
                    "keys": {key.logical_name: list(key.attributes) for key in table.keys.values()},
                    "changeTracking": table.change_tracking,
                }
                for name, table in self.tables.items()
            },
            "relationships": sorted(self.relationships),
            "publishes": list(self.publishes),
        }

    def fault_response(self, status: int, request: Request) -> Response:
        code, message = _FAULT_BODIES.get(status, ("0x80040216", f"An unexpected error occurred (HTTP {status})."))
        return error_response(status, code, message)

    def not_found_response(self, request: Request) -> Response:
        return error_response(404, QUERY_ERROR_CODE, f"Resource not found for the segment '{request.path}'.")

    # ---- auth ------------------------------------------------------------------------------------
    def unknown_option_response(self, request: Request, name: str) -> Response:
        return error_response(400, QUERY_ERROR_CODE, f"The query parameter {name} is not supported")

    def www_authenticate(self) -> str:
        return f"Bearer authorization_uri=https://127.0.0.1:{credentials.IDENTITY_PORT}/{credentials.TENANT_ID}/oauth2/authorize, resource_id={self.base_url}/"

    def authenticate(self, request: Request) -> Caller:
        # Imported here: the identity module reads its signing key lazily; keep import cheap.
        from sandbox.identity import InvalidAccessToken, verify_access_token

        header = request.header("authorization") or ""
        if not header.lower().startswith("bearer "):
            raise ODataError(401, "", "No bearer token in the Authorization header.")
        try:
            claims = verify_access_token(header[7:].strip(), audience=self.base_url)
        except InvalidAccessToken as error:
            raise ODataError(401, "", f"Bearer token rejected: {error.reason}.") from error
        application = str(claims.get("appid") or claims.get("azp") or "")
        with self.lock:
            for user_id, user in self.records["systemuser"].items():
                if application and user.get("applicationid") == application:
                    return Caller(user_id)
        # An app registration without an application user in the org (code from the docs' list; unverified).
        raise ODataError(403, "0x80072560", "The user is not a member of the organization.")

    # ---- helpers -----------------------------------------------------------------------------------
    def table_by_set(self, entity_set: str) -> TableDef:
        for table in self.tables.values():
            if table.entity_set == entity_set:
                return table
        raise ODataError(404, QUERY_ERROR_CODE, f"Resource not found for the segment '{entity_set}'.")

    def _tick(self) -> tuple[int, str]:
        self.version += 1
        return self.version, format_time(self.clock())

    def _etag(self, record: JsonDict) -> str:
        return f'W/"{record["versionnumber"]}"'

    def entity_url(self, table: TableDef, record_id: str) -> str:
        return f"{self.base_url}{API}/{table.entity_set}({record_id})"

    def find(self, table: TableDef, key: dict[str, Any]) -> JsonDict | None:
        rows = self.records[table.logical_name]
        if list(key) == [table.primary_id]:
            return rows.get(str(key[table.primary_id]))
        names = set(key)
        if not any(
            set(definition.attributes) == names and self._key_active(definition) for definition in table.keys.values()
        ):
            if not any(set(definition.attributes) == names for definition in table.keys.values()):
                raise ODataError(
                    400,
                    QUERY_ERROR_CODE,
                    f"Invalid key: '{table.logical_name}' has no alternate key with the attributes {', '.join(sorted(names))}.",
                )
            raise ODataError(
                400,
                "0x80060891",  # unverified code: upserts by key fail until the index is Active (crm-apis.md B5)
                f"The alternate key on {', '.join(sorted(names))} of '{table.logical_name}' is not active yet.",
            )
        for record in rows.values():
            if all(_key_equal(record.get(name), value) for name, value in key.items()):
                return record
        return None

    def _key_active(self, key: KeyDef) -> bool:
        return time.monotonic() - key.created_at >= KEY_BUILD_SECONDS

    def _not_found(self, table: TableDef, key: dict[str, Any]) -> ODataError:
        if list(key) == [table.primary_id]:
            return ODataError(
                404, NOT_FOUND_CODE, f"{table.logical_name} With Id = {key[table.primary_id]} Does Not Exist"
            )
        return ODataError(
            404, NOT_FOUND_CODE, f"A record with the specified key values does not exist in {table.logical_name} entity"
        )

    # ---- writing -------------------------------------------------------------------------------------
    def _bind_target(self, value: Any, allowed: str) -> str:
        """`/accounts(<id>)`, `accounts(<id>)`, an absolute URL or an alternate key -> the target id."""
        if not isinstance(value, str):
            raise query_error("An @odata.bind value must be a string URL like '/accounts(<id>)'.")
        path = urlsplit(value).path if value.startswith("http") else value
        path = path.split(API, 1)[-1].lstrip("/")
        found = re.fullmatch(r"([A-Za-z_]\w*)\((.+)\)", path)
        if not found:
            raise query_error(f"The @odata.bind value '{value}' is not a valid entity reference URL.")
        target = self.table_by_set(found.group(1))
        if target.logical_name != allowed:
            raise query_error(
                f"The @odata.bind value '{value}' refers to a '{target.logical_name}', expected '{allowed}'."
            )
        key = _parse_key(found.group(2), target)
        record = self.find(target, key)
        if record is None:
            raise self._not_found(target, key)
        return str(record[target.primary_id])

    def _convert(self, table: TableDef, column: ColumnDef, value: Any) -> Any:
        where = f"'{column.logical_name}' of '{table.logical_name}'"
        if value is None:
            return None
        if column.type in ("String", "Memo"):
            if not isinstance(value, str):
                raise query_error(
                    f"Cannot convert the literal '{value}' to the expected type 'Edm.String' for {where}."
                )
            if column.max_length is not None and len(value) > column.max_length:
                raise ODataError(
                    400,
                    VALIDATION_CODE,
                    f"A validation error occurred. The length of the '{column.logical_name}' attribute of the "
                    f"'{table.logical_name}' entity exceeded the maximum allowed length of '{column.max_length}'.",
                )
            return value
        if column.type == "Boolean":
            if not isinstance(value, bool):
                raise query_error(
                    f"Cannot convert the literal '{value}' to the expected type 'Edm.Boolean' for {where}."
                )
            return value
        if column.type in ("Picklist", "State", "Status", "Integer", "BigInt"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise query_error(f"Cannot convert the literal '{value}' to the expected type 'Edm.Int32' for {where}.")
            if column.type == "Picklist" and column.options and value not in column.options:
                raise ODataError(
                    400,
                    VALIDATION_CODE,
                    f"A validation error occurred. The value {value} of {where} is outside the valid range.",
                )
            return value
        if column.type in ("Money", "Decimal"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise query_error(
                    f"Cannot convert the literal '{value}' to the expected type 'Edm.Decimal' for {where}."
                )
            return value
        if column.type == "DateTime":
            if not isinstance(value, str):
                raise query_error(
                    f"Cannot convert the literal '{value}' to the expected type 'Edm.DateTimeOffset' for {where}."
                )
            try:
                if column.date_only:
                    return dt.date.fromisoformat(value[:10]).isoformat()
                return format_time(parse_datetime(value))
            except ValueError as error:
                raise query_error(f"Cannot convert the literal '{value}' to a date/time for {where}.") from error
        if column.type == "Uniqueidentifier":
            try:
                return str(uuid.UUID(str(value)))
            except ValueError as error:
                raise query_error(
                    f"Cannot convert the literal '{value}' to the expected type 'Edm.Guid' for {where}."
                ) from error
        raise query_error(f"The property {where} cannot be written.")

    def _changes(self, table: TableDef, body: Any, *, allow_state: bool) -> JsonDict:
        """Validate a request body into {column logical name: stored value} (lookups store the target id)."""
        if not isinstance(body, dict):
            raise query_error("The request body must be a JSON object.")
        changes: JsonDict = {}
        for name, value in body.items():
            if name.endswith("@odata.bind"):
                navigation = name[: -len("@odata.bind")]
                found = table.navigation(navigation)
                if found is None:
                    raise query_error(
                        f"An undeclared property '{navigation}' which only has property annotations in the payload but "
                        "no property value was found in the payload. In OData, only declared navigation properties and "
                        "declared named streams can be represented as properties without values."
                    )
                column, target = found
                changes[column.logical_name] = None if value is None else self._bind_target(value, target)
                continue
            if name.startswith("@") or "@" in name:
                continue  # annotations (`@odata.type`, formatted values) are ignored on write
            column_def = table.columns.get(name)
            if column_def is None or (column_def.read_only and name != table.primary_id):
                raise query_error(
                    f"The property '{name}' does not exist on type '{table.type_name}'. Make sure to only use property "
                    "names that are defined by the type."
                )
            if column_def.type in LOOKUP_TYPES:
                raise query_error(
                    f"A node of type 'PrimitiveValue' was read from the JSON reader when trying to read the contents of "
                    f"the navigation property '{name}'; however, a 'StartObject' node or 'StartArray' node was expected."
                )
            if column_def.type in ("State", "Status") and not allow_state:
                continue
            changes[name] = self._convert(table, column_def, value)
        self._check_state(table, changes)
        return changes

    def _check_state(self, table: TableDef, changes: JsonDict) -> None:
        if "statecode" not in changes and "statuscode" not in changes:
            return
        states = table.states()
        state = changes.get("statecode")
        status = changes.get("statuscode")
        if state is not None and state not in states:
            raise ODataError(400, INVALID_ARGUMENT_CODE, f"{state} is not a valid state code on {table.logical_name}.")
        if state is not None and status is not None and status not in states[state]:
            raise ODataError(
                400,
                INVALID_ARGUMENT_CODE,
                f"{status} is not a valid status code for state code {table.logical_name}State.{state}.",
            )

    def _check_keys(self, table: TableDef, record: JsonDict, record_id: str) -> None:
        for key in table.keys.values():
            values = [record.get(name) for name in key.attributes]
            if any(value is None for value in values):
                continue
            for other_id, other in self.records[table.logical_name].items():
                if other_id != record_id and all(
                    _key_equal(other.get(name), value) for name, value in zip(key.attributes, values, strict=True)
                ):
                    raise ODataError(
                        412,
                        DUPLICATE_CODE,
                        f"A record that has the attribute values {', '.join(map(str, values))} already exists. The entity "
                        f"key {key.schema_name} requires that this set of attributes contains unique values.",
                    )

    def _computed(self, table: TableDef, record: JsonDict) -> None:
        if "fullname" in table.columns and table.logical_name in ("contact", "lead"):
            parts = [record.get("firstname"), record.get("lastname")]
            record["fullname"] = " ".join(str(part) for part in parts if part) or None
        if table.logical_name == "opportunity":
            value = record.get("estimatedvalue")
            record["exchangerate"] = 1
            record["estimatedvalue_base"] = value

    def insert(self, logical_name: str, changes: JsonDict, caller: Caller, *, record_id: str | None = None) -> JsonDict:
        """Create a record from already validated changes (also used for seeding)."""
        table = self.tables[logical_name]
        new_id = record_id or str(changes.get(table.primary_id) or uuid.uuid4())
        if new_id in self.records[logical_name]:
            raise ODataError(412, DUPLICATE_CODE, "Cannot insert duplicate key.")
        version, stamp = self._tick()
        record: JsonDict = {name: column.default for name, column in table.columns.items()}
        record.update(
            {
                table.primary_id: new_id,
                "createdon": stamp,
                "modifiedon": stamp,
                "versionnumber": version,
                "createdby": caller.user_id,
                "modifiedby": caller.user_id,
                "statecode": 0,
                "statuscode": min(table.states()[0]),
            }
        )
        if "ownerid" in table.columns:
            record["ownerid"] = caller.user_id
        if "transactioncurrencyid" in table.columns and logical_name != "transactioncurrency":
            record["transactioncurrencyid"] = BASE_CURRENCY_ID
        record.update({name: value for name, value in changes.items() if name != table.primary_id})
        self._computed(table, record)
        self._check_keys(table, record, new_id)
        self.records[logical_name][new_id] = record
        return record

    def update(self, table: TableDef, record: JsonDict, changes: JsonDict, caller: Caller) -> None:
        candidate = {**record, **changes}
        self._computed(table, candidate)
        self._check_keys(table, candidate, str(record[table.primary_id]))
        version, stamp = self._tick()
        record.update(changes)
        record.update({"modifiedon": stamp, "modifiedby": caller.user_id, "versionnumber": version})
        self._computed(table, record)

    def delete(self, table: TableDef, record_id: str) -> None:
        del self.records[table.logical_name][record_id]
        self.version += 1
        self.tombstones.append(Tombstone(table.logical_name, record_id, self.version))
        # Cascade (custom 1:N relationships are Cascade) or remove the link (standard ones).
        for child_name, child_lookup in table.collections.values():
            for child_id, child in list(self.records[child_name].items()):
                if child.get(child_lookup) == record_id:
                    if self.tables[child_name].custom:
                        self.delete(self.tables[child_name], child_id)
                    else:
                        child[child_lookup] = None

    # ---- reading -------------------------------------------------------------------------------------
    def render(
        self, table: TableDef, record: JsonDict, options: QueryOptions, annotations: bool, *, context: bool = False
    ) -> JsonDict:
        wire = table.wire_columns()
        names = options.select if options.select is not None else list(wire)
        for name in names:
            if name not in wire:
                raise query_error(f"Could not find a property named '{name}' on type '{table.type_name}'.")
        row: JsonDict = {}
        if context:
            row["@odata.context"] = f"{self.base_url}{API}/$metadata#{table.entity_set}/$entity"
        row["@odata.etag"] = self._etag(record)
        for name in [*names, table.primary_id]:
            column = wire[name]
            value = record.get(column.logical_name)
            row[name] = value
            if annotations and value is not None:
                if column.is_lookup:
                    target = self._lookup_table(column, str(value))
                    if target is not None:
                        row[f"{name}@Microsoft.Dynamics.CRM.lookuplogicalname"] = target.logical_name
                        referenced = self.records[target.logical_name].get(str(value), {})
                        row[f"{name}@OData.Community.Display.V1.FormattedValue"] = referenced.get(target.primary_name)
                elif column.type == "Picklist" and value in column.options:
                    row[f"{name}@OData.Community.Display.V1.FormattedValue"] = column.options[value]
        for navigation, inner in options.expand.items():
            row[navigation] = self._expand(table, record, navigation, inner, annotations)
        return row

    def _lookup_table(self, column: ColumnDef, record_id: str) -> TableDef | None:
        for target in column.navigations.values():
            if target in self.records and record_id in self.records[target]:
                return self.tables[target]
        return None

    def _expand(
        self, table: TableDef, record: JsonDict, navigation: str, options: QueryOptions, annotations: bool
    ) -> Any:
        single = table.navigation(navigation)
        if single is not None:
            column, target_name = single
            target_id = record.get(column.logical_name)
            target = self.tables[target_name]
            referenced = self.records[target_name].get(str(target_id)) if target_id else None
            return None if referenced is None else self.render(target, referenced, options, annotations)
        if navigation in table.collections:
            child_name, child_lookup = table.collections[navigation]
            child = self.tables[child_name]
            rows = [
                row for row in self.records[child_name].values() if row.get(child_lookup) == record[table.primary_id]
            ]
            rows = self._query(child, rows, options)
            if options.top is not None:
                rows = rows[: options.top]
            return [self.render(child, row, options, annotations) for row in rows]
        raise query_error(f"Could not find a property named '{navigation}' on type '{table.type_name}'.")

    def _query(self, table: TableDef, rows: list[JsonDict], options: QueryOptions) -> list[JsonDict]:
        wire = table.wire_columns()
        if options.filter is not None:
            for name in properties_of(options.filter):
                if name not in wire:
                    raise query_error(f"Could not find a property named '{name}' on type '{table.type_name}'.")
            rows = [row for row in rows if evaluate(options.filter, _wire_view(table, row))]
        for name, _ in options.orderby:
            if name not in wire:
                raise query_error(f"Could not find a property named '{name}' on type '{table.type_name}'.")
        # The primary key is the last sort key, as Dataverse appends it for stable paging.
        rows = sorted(rows, key=lambda row: sort_key(row.get(table.primary_id)))
        for name, descending in reversed(options.orderby):
            column = wire[name].logical_name
            rows = sorted(rows, key=lambda row, column=column: sort_key(row.get(column)), reverse=descending)  # type: ignore[misc]
        return rows

    # ---- routes: records ---------------------------------------------------------------------------
    @route("GET", API + "/WhoAmI")
    @api
    def who_am_i(self, request: Request, caller: Caller) -> Response:
        return json_response(
            200,
            {
                "@odata.context": f"{self.base_url}{API}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                "BusinessUnitId": "b0000000-0000-4000-8000-000000000001",
                "UserId": caller.user_id,
                "OrganizationId": "0e000000-0000-4000-8000-000000000001",
            },
            _odata_headers(),
        )

    @route("POST", API + r"/\$batch")
    @api
    def batch(self, request: Request, caller: Caller) -> Response:
        items = parse_batch(request.body, request.header("content-type"))
        continue_on_error = "odata.continue-on-error" in _parse_prefer(request)
        results: list[PartResponse | list[PartResponse]] = []
        status = 200
        for item in items:
            last: PartResponse
            if isinstance(item, ChangeSet):
                snapshot = copy.deepcopy((self.records, self.tombstones, self.version))
                references: dict[str, str] = {}
                responses: list[PartResponse] = []
                for inner in item.requests:
                    response = self._run_part(inner, request, references)
                    if response.status >= 400:
                        # A change set is atomic: undo its earlier parts and report only the failure.
                        self.records, self.tombstones, self.version = snapshot
                        responses = [response]
                        break
                    responses.append(response)
                results.append(responses)
                last = responses[-1]
            else:
                last = self._run_part(item, request, {})
                results.append(last)
            if last.status >= 400 and not continue_on_error:
                status = last.status
                break
        content_type, body = format_batch(results)
        return Response(status, body, {"Content-Type": content_type, **_odata_headers()})

    def _run_part(self, part: BatchRequest, outer: Request, references: dict[str, str]) -> PartResponse:
        url = part.url
        for content_id, location in references.items():
            url = re.sub(rf"^\${re.escape(content_id)}(?=/|$)", location, url)
        body = part.body
        for content_id, location in references.items():
            body = body.replace(f'"${content_id}"'.encode(), json.dumps(location).encode())
        split = urlsplit(url)
        path = split.path if split.path.startswith("/") else f"{API}/{split.path}"
        headers = {**part.headers, "authorization": outer.header("authorization") or ""}
        inner = Request(
            part.method, path, parse_qs(split.query, keep_blank_values=True), headers, body, raw_query=split.query
        )
        response = self.not_found_response(inner) if path.endswith("/$batch") else self.dispatch(inner)
        if part.content_id and "OData-EntityId" in response.headers:
            references[part.content_id] = response.headers["OData-EntityId"]
        return PartResponse(response.status, response.headers, response.body, part.content_id)

    @route("POST", API + "/WinOpportunity")
    @api
    def win_opportunity(self, request: Request, caller: Caller) -> Response:
        return self._close_opportunity(request, caller, won=True)

    @route("POST", API + "/LoseOpportunity")
    @api
    def lose_opportunity(self, request: Request, caller: Caller) -> Response:
        return self._close_opportunity(request, caller, won=False)

    def _close_opportunity(self, request: Request, caller: Caller, *, won: bool) -> Response:
        body = _json_body(request)
        status = body.get("Status")
        close = body.get("OpportunityClose")
        if not isinstance(close, dict) or "opportunityid@odata.bind" not in close:
            raise query_error("OpportunityClose with 'opportunityid@odata.bind' is required.")
        opportunity_table = self.tables["opportunity"]
        state = 1 if won else 2
        if isinstance(status, bool) or not isinstance(status, int) or status not in opportunity_table.states()[state]:
            raise ODataError(
                400,
                INVALID_ARGUMENT_CODE,
                f"{status} is not a valid status code for state code OpportunityState.{state}.",
            )
        close_changes = self._changes(self.tables["opportunityclose"], close, allow_state=False)
        opportunity = self.records["opportunity"][str(close_changes["opportunityid"])]
        if opportunity["statecode"] != 0:
            # Real message for closing a closed opportunity (code unverified).
            raise ODataError(400, INVALID_ARGUMENT_CODE, "The opportunity is already closed.")
        self.insert("opportunityclose", close_changes, caller)
        changes: JsonDict = {
            "statecode": state,
            "statuscode": status,
            "actualclosedate": self.clock().date().isoformat(),
        }
        if won:
            changes["actualvalue"] = close_changes.get("actualrevenue", opportunity.get("estimatedvalue"))
        self.update(opportunity_table, opportunity, changes, caller)
        return empty_response(204, _odata_headers())

    @route("POST", API + r"/{entity_set}\({key}\)/Microsoft.Dynamics.CRM.QualifyLead")
    @api
    def qualify_lead(self, request: Request, caller: Caller) -> Response:
        table = self.table_by_set(request.path_params["entity_set"])
        if table.logical_name != "lead":
            raise query_error("QualifyLead is bound to the lead entity.")
        key = _parse_key(request.path_params["key"], table)
        lead = self.find(table, key)
        if lead is None:
            raise self._not_found(table, key)
        body = _json_body(request)
        if lead["statecode"] != 0:
            raise ODataError(400, INVALID_ARGUMENT_CODE, "The lead is closed; it cannot be qualified.")
        created: list[JsonDict] = []
        account_id = lead.get("parentaccountid")
        if body.get("CreateAccount") and lead.get("companyname"):
            account = self.insert("account", {"name": lead["companyname"]}, caller)
            account_id = account["accountid"]
            created.append({"@odata.type": "#Microsoft.Dynamics.CRM.account", "accountid": account_id})
        contact_id = lead.get("parentcontactid")
        if body.get("CreateContact") and lead.get("lastname"):
            contact = self.insert(
                "contact",
                {
                    "firstname": lead.get("firstname"),
                    "lastname": lead.get("lastname"),
                    "emailaddress1": lead.get("emailaddress1"),
                    "parentcustomerid": account_id,
                },
                caller,
            )
            contact_id = contact["contactid"]
            created.append({"@odata.type": "#Microsoft.Dynamics.CRM.contact", "contactid": contact_id})
        opportunity_id = None
        if body.get("CreateOpportunity"):
            opportunity = self.insert(
                "opportunity",
                {
                    "name": lead.get("subject"),
                    "parentaccountid": account_id,
                    "customerid": account_id,
                    "parentcontactid": contact_id,
                    "originatingleadid": lead["leadid"],
                    "estimatedvalue": lead.get("estimatedamount"),
                },
                caller,
            )
            opportunity_id = opportunity["opportunityid"]
            created.append({"@odata.type": "#Microsoft.Dynamics.CRM.opportunity", "opportunityid": opportunity_id})
        status = body.get("Status", 3)
        self.update(
            table, lead, {"statecode": 1, "statuscode": status, "qualifyingopportunityid": opportunity_id}, caller
        )
        context = f"{self.base_url}{API}/$metadata#Collection(Microsoft.Dynamics.CRM.crmbaseentity)"
        return json_response(200, {"@odata.context": context, "value": created}, _odata_headers())

    @route("GET", API + r"/{entity_set}\({key}\)", query=RECORD_OPTIONS)
    @api
    def retrieve(self, request: Request, caller: Caller) -> Response:
        table = self.table_by_set(request.path_params["entity_set"])
        key = _parse_key(request.path_params["key"], table)
        options = parse_options(request.arg)
        record = self.find(table, key)
        if record is None:
            raise self._not_found(table, key)
        if request.header("if-none-match") == self._etag(record):
            return empty_response(304, _odata_headers())
        annotations = "odata.include-annotations" in _parse_prefer(request)
        return json_response(200, self.render(table, record, options, annotations, context=True), _odata_headers())

    @route("PATCH", API + r"/{entity_set}\({key}\)", query=RECORD_OPTIONS)
    @api
    def patch(self, request: Request, caller: Caller) -> Response:
        table = self.table_by_set(request.path_params["entity_set"])
        key = _parse_key(request.path_params["key"], table)
        changes = self._changes(table, _json_body(request), allow_state=True)
        for name, value in key.items():
            if name in changes and not _key_equal(changes[name], value):
                raise query_error(f"The key attribute '{name}' in the body does not match the key in the URL.")
        record = self.find(table, key)
        if_match = request.header("if-match")
        if_none_match = request.header("if-none-match")
        if record is None and if_match is not None:
            raise ODataError(404, "", f"{table.logical_name} With Id = {next(iter(key.values()))} Does Not Exist")
        if record is not None and if_none_match == "*":
            raise ODataError(412, DUPLICATE_CODE, "A record with matching key values already exists.")
        if record is not None and if_match not in (None, "*") and if_match != self._etag(record):
            raise ODataError(
                412,
                CONCURRENCY_CODE,
                "The version of the existing record doesn't match the RowVersion property provided.",
            )
        if record is not None:
            self._guard_state_change(table, record, changes)
        prefer = _parse_prefer(request)
        created = record is None
        if record is None:
            new_values = {**changes, **{name: value for name, value in key.items() if name != table.primary_id}}
            record = self.insert(table.logical_name, new_values, caller, record_id=key.get(table.primary_id))
        else:
            self.update(table, record, changes, caller)
        # An upsert by alternate key answers with the key URL (crm-apis.md B2), otherwise with the id.
        entity_id = str(record[table.primary_id]) if table.primary_id in key else request.path_params["key"]
        headers = {**_odata_headers(), "OData-EntityId": self.entity_url(table, entity_id)}
        if prefer.get("return") == "representation":
            options = parse_options(request.arg)
            headers["Preference-Applied"] = "return=representation"
            return json_response(
                201 if created else 200, self.render(table, record, options, False, context=True), headers
            )
        return empty_response(204, headers)

    def _guard_state_change(self, table: TableDef, record: JsonDict, changes: JsonDict) -> None:
        state = changes.get("statecode")
        if state is None or state == record.get("statecode"):
            return
        # Closing goes through actions: WinOpportunity/LoseOpportunity, QualifyLead (reopen by update is allowed).
        if (table.logical_name == "opportunity" and state != 0) or (table.logical_name == "lead" and state == 1):
            action = "WinOpportunity or LoseOpportunity" if table.logical_name == "opportunity" else "QualifyLead"
            raise ODataError(400, INVALID_ARGUMENT_CODE, f"Use the {action} message to set this state.")
        if "statuscode" not in changes:
            changes["statuscode"] = min(table.states()[state])

    @route("DELETE", API + r"/{entity_set}\({key}\)")
    @api
    def delete_record(self, request: Request, caller: Caller) -> Response:
        table = self.table_by_set(request.path_params["entity_set"])
        key = _parse_key(request.path_params["key"], table)
        record = self.find(table, key)
        if record is None:
            raise self._not_found(table, key)
        if_match = request.header("if-match")
        if if_match not in (None, "*") and if_match != self._etag(record):
            raise ODataError(
                412,
                CONCURRENCY_CODE,
                "The version of the existing record doesn't match the RowVersion property provided.",
            )
        self.delete(table, str(record[table.primary_id]))
        return empty_response(204, _odata_headers())

    @route("POST", API + "/{entity_set}", query=RECORD_OPTIONS)
    @api
    def create(self, request: Request, caller: Caller) -> Response:
        table = self.table_by_set(request.path_params["entity_set"])
        changes = self._changes(table, _json_body(request), allow_state=False)
        record = self.insert(table.logical_name, changes, caller)
        url = self.entity_url(table, str(record[table.primary_id]))
        if _parse_prefer(request).get("return") == "representation":
            options = parse_options(request.arg)
            headers = {**_odata_headers(), "Preference-Applied": "return=representation"}
            return json_response(201, self.render(table, record, options, False, context=True), headers)
        return empty_response(204, {**_odata_headers(), "OData-EntityId": url})

    @route("GET", API + "/{entity_set}", query=LIST_OPTIONS)
    @api
    def list_records(self, request: Request, caller: Caller) -> Response:
        table = self.table_by_set(request.path_params["entity_set"])
        prefer = _parse_prefer(request)
        page_size = MAX_PAGE_SIZE
        applied: list[str] = []
        if "odata.maxpagesize" in prefer:
            try:
                page_size = max(1, min(MAX_PAGE_SIZE, int(prefer["odata.maxpagesize"])))
            except ValueError as error:
                raise query_error(f"Invalid odata.maxpagesize '{prefer['odata.maxpagesize']}'.") from error
            applied.append(f"odata.maxpagesize={page_size}")
        if "odata.track-changes" in prefer or request.arg("$deltatoken") is not None:
            return self._changes_page(request, table, page_size, applied)
        options = parse_options(request.arg)
        rows = self._query(table, list(self.records[table.logical_name].values()), options)
        total = len(rows)
        if options.top is not None and "odata.maxpagesize" not in prefer:
            rows = rows[: options.top]  # `$top` is ignored when a page size is set (crm-apis.md B2)
        page, next_link = self._page(request, rows, page_size)
        annotations = "odata.include-annotations" in prefer
        if annotations:
            applied.append('odata.include-annotations="*"')
        payload: JsonDict = {"@odata.context": f"{self.base_url}{API}/$metadata#{table.entity_set}"}
        if options.count:
            payload["@odata.count"] = min(total, MAX_PAGE_SIZE)
            if total > MAX_PAGE_SIZE:
                payload["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] = True
        payload["value"] = [self.render(table, row, options, annotations) for row in page]
        if next_link:
            payload["@odata.nextLink"] = next_link
        headers = _odata_headers()
        if applied:
            headers["Preference-Applied"] = ",".join(applied)
        return json_response(200, payload, headers)

    def _page(self, request: Request, rows: list[JsonDict], page_size: int) -> tuple[list[JsonDict], str | None]:
        """Page by number in a paging-cookie shaped `$skiptoken` (follow `@odata.nextLink` verbatim)."""
        token = request.arg("$skiptoken")
        page_number = 1
        if token:
            found = re.search(r'pagenumber="(\d+)"', token)
            if not found:
                raise query_error(f"Invalid $skiptoken '{token}'.")
            page_number = int(found.group(1))
        start = (page_number - 1) * page_size
        page = rows[start : start + page_size]
        if start + page_size >= len(rows):
            return page, None
        last = page[-1] if page else {}
        cookie = (
            f'<cookie pagenumber="{page_number + 1}" pagingcookie="%253ccookie%2520page%253d%2522{page_number}%2522%253e'
            f'{quote(str(last.get("versionnumber", "")))}%253c%252fcookie%253e" istracking="False" />'
        )
        query = "&".join(part for part in request.raw_query.split("&") if part and not part.startswith("$skiptoken="))
        separator = "&" if query else ""
        return page, f"{self.base_url}{request.path}?{query}{separator}$skiptoken={quote(cookie, safe='')}"

    def _changes_page(self, request: Request, table: TableDef, page_size: int, applied: list[str]) -> Response:
        for option in ("$filter", "$orderby", "$expand", "$top"):
            if request.arg(option) is not None:
                raise query_error(f"The query option '{option}' is not supported with change tracking.")
        if not table.change_tracking:
            raise ODataError(
                400, INVALID_ARGUMENT_CODE, f"Change tracking is not enabled for the entity '{table.logical_name}'."
            )
        options = parse_options(request.arg)
        token = request.arg("$deltatoken")
        since = 0
        if token is not None:
            found = re.fullmatch(r"(\d+)!.*", unquote(token))
            if not found:
                raise ODataError(400, INVALID_ARGUMENT_CODE, f"The delta token '{token}' is not valid.")
            since = int(found.group(1))
        snapshot = request.arg("$skiptoken")
        # The delta token of a paged read is fixed by its first page (carried in the skip token).
        upto = int(re.search(r'upto="(\d+)"', snapshot).group(1)) if snapshot and 'upto="' in snapshot else self.version  # type: ignore[union-attr]
        changed = [
            row for row in self.records[table.logical_name].values() if since < int(row["versionnumber"]) <= upto
        ]
        changed.sort(key=lambda row: int(row["versionnumber"]))
        deleted = [
            {
                "@odata.context": f"{self.base_url}{API}/$metadata#{table.entity_set}/$deletedEntity",
                "id": stone.record_id,
                "reason": "deleted",
            }
            for stone in self.tombstones
            if stone.table == table.logical_name and since < stone.version <= upto and token is not None
        ]
        values = [self.render(table, row, options, False) for row in changed] + deleted
        page_number = 1
        if snapshot:
            page_number = int(re.search(r'pagenumber="(\d+)"', snapshot).group(1))  # type: ignore[union-attr]
        start = (page_number - 1) * page_size
        page = values[start : start + page_size]
        payload: JsonDict = {"@odata.context": f"{self.base_url}{API}/$metadata#{table.entity_set}", "value": page}
        select = f"$select={request.arg('$select')}&" if request.arg("$select") else ""
        if start + page_size < len(values):
            cookie = f'<cookie pagenumber="{page_number + 1}" upto="{upto}" istracking="True" />'
            base_query = f"{select}$deltatoken={quote(token)}&" if token is not None else select
            payload["@odata.nextLink"] = (
                f"{self.base_url}{API}/{table.entity_set}?{base_query}$skiptoken={quote(cookie, safe='')}"
            )
        else:
            stamp = self.clock().strftime("%m/%d/%Y %H:%M:%S")
            payload["@odata.deltaLink"] = (
                f"{self.base_url}{API}/{table.entity_set}?{select}$deltatoken={quote(f'{upto}!{stamp}', safe='')}"
            )
        headers = _odata_headers()
        headers["Preference-Applied"] = ",".join([*applied, "odata.track-changes"])
        return json_response(200, payload, headers)

    # ---- routes: metadata -----------------------------------------------------------------------------
    def _solution_prefix(self, request: Request) -> str | None:
        """The publisher prefix of the `MSCRM.SolutionUniqueName` solution (None without the header)."""
        unique_name = request.header("mscrm.solutionuniquename")
        if unique_name is None:
            return None
        for solution in self.records["solution"].values():
            if str(solution.get("uniquename", "")).lower() == unique_name.lower():
                publisher = self.records["publisher"].get(str(solution.get("publisherid")))
                return str((publisher or {}).get("customizationprefix") or "new")
        raise ODataError(404, NOT_FOUND_CODE, f"The solution '{unique_name}' does not exist.")

    def _check_prefix(self, request: Request, schema_name: str) -> None:
        prefix = self._solution_prefix(request) or "new"
        if not schema_name.lower().startswith(f"{prefix.lower()}_"):
            raise ODataError(
                400,
                "0x80044355",  # unverified code
                f"The schema name {schema_name} does not start with the customization prefix '{prefix}_' of the solution's publisher.",
            )

    def _entity_metadata(self, table: TableDef) -> JsonDict:
        return {
            "MetadataId": table.metadata_id,
            "LogicalName": table.logical_name,
            "SchemaName": table.schema_name or table.logical_name,
            "EntitySetName": table.entity_set,
            "PrimaryIdAttribute": table.primary_id,
            "PrimaryNameAttribute": table.primary_name,
            "IsCustomEntity": table.custom,
            "IsPrivate": False,
            "IsActivity": False,
            "IsIntersect": False,
            "OwnershipType": table.ownership,
            "ChangeTrackingEnabled": table.change_tracking,
            "IsOptimisticConcurrencyEnabled": True,
            "DisplayName": label(table.display_name or table.logical_name),
            "Attributes": [column.metadata() for column in table.columns.values()],
            "Keys": [self._key_metadata(table, key) for key in table.keys.values()],
        }

    def _key_metadata(self, table: TableDef, key: KeyDef) -> JsonDict:
        return {
            "MetadataId": key.metadata_id,
            "LogicalName": key.logical_name,
            "SchemaName": key.schema_name,
            "EntityLogicalName": table.logical_name,
            "KeyAttributes": list(key.attributes),
            "DisplayName": label(key.display_name),
            "EntityKeyIndexStatus": "Active" if self._key_active(key) else "Pending",
        }

    def _metadata_table(self, key_segment: str) -> TableDef:
        key = unquote(key_segment)
        found = re.fullmatch(r"LogicalName='([^']+)'", key)
        for table in self.tables.values():
            if (found and table.logical_name == found.group(1)) or table.metadata_id == key:
                return table
        raise ODataError(404, NOT_FOUND_CODE, f"Could not find an entity with key {key}.")

    def _project(self, item: JsonDict, options: QueryOptions) -> JsonDict:
        """Metadata `$select` / `$expand` (Attributes and Keys are expanded only when asked)."""
        keep = set(options.select or [name for name in item if name not in ("Attributes", "Keys")])
        keep.update(options.expand)
        projected: JsonDict = {name: value for name, value in item.items() if name in keep or name == "MetadataId"}
        for navigation, inner in options.expand.items():
            children = item.get(navigation)
            if isinstance(children, dict):  # single-valued, e.g. a picklist's OptionSet
                projected[navigation] = self._project(children, inner)
                continue
            if not isinstance(children, list):
                raise query_error(f"Could not find a property named '{navigation}' on type 'EntityMetadata'.")
            projected[navigation] = [self._project(child, inner) for child in _filter_metadata(children, inner, "")]
        return projected

    @route("GET", API + "/EntityDefinitions", query=METADATA_LIST_OPTIONS)
    @api
    def list_entity_definitions(self, request: Request, caller: Caller) -> Response:
        options = parse_options(request.arg)
        items = _filter_metadata([self._entity_metadata(table) for table in self.tables.values()], options, "Entity")
        value = [self._project(item, options) for item in items]
        return json_response(
            200, {"@odata.context": f"{self.base_url}{API}/$metadata#EntityDefinitions", "value": value}
        )

    @route("GET", API + r"/EntityDefinitions\({key}\)", query=RECORD_OPTIONS)
    @api
    def get_entity_definition(self, request: Request, caller: Caller) -> Response:
        table = self._metadata_table(request.path_params["key"])
        return json_response(200, self._project(self._entity_metadata(table), parse_options(request.arg)))

    @route("PUT", API + r"/EntityDefinitions\({key}\)")
    @api
    def put_entity_definition(self, request: Request, caller: Caller) -> Response:
        """Updates use PUT with the full definition; only what the simulator models is applied."""
        table = self._metadata_table(request.path_params["key"])
        body = _json_body(request)
        if body.get("LogicalName", table.logical_name) != table.logical_name:
            raise query_error("The LogicalName in the body does not match the entity in the URL.")
        if "ChangeTrackingEnabled" in body:
            if table.change_tracking and not body["ChangeTrackingEnabled"]:
                raise ODataError(400, INVALID_ARGUMENT_CODE, "Change tracking cannot be disabled once it is enabled.")
            table.change_tracking = bool(body["ChangeTrackingEnabled"])
        if "DisplayName" in body and label_text(body["DisplayName"]):
            table.display_name = label_text(body["DisplayName"])
        return empty_response(204, _odata_headers())

    @route("POST", API + "/EntityDefinitions")
    @api
    def create_entity_definition(self, request: Request, caller: Caller) -> Response:
        body = _json_body(request)
        schema_name = str(body.get("SchemaName") or "")
        if not schema_name:
            raise query_error("SchemaName is required.")
        self._check_prefix(request, schema_name)
        logical_name = schema_name.lower()
        if logical_name in self.tables:
            raise ODataError(
                400, "0x80047013", f"An entity with the name {schema_name} already exists."
            )  # unverified code
        attributes = body.get("Attributes") or []
        primary = [
            attribute for attribute in attributes if isinstance(attribute, dict) and attribute.get("IsPrimaryName")
        ]
        if len(primary) != 1:
            raise query_error("The entity definition must contain exactly one attribute with IsPrimaryName true.")
        primary_column = self._column_from_metadata(primary[0])
        entity_set = str(body.get("EntitySetName") or (logical_name + ("es" if logical_name.endswith("s") else "s")))
        table = custom_table(
            logical_name,
            schema_name,
            entity_set,
            label_text(body.get("DisplayName")),
            str(body.get("OwnershipType") or "UserOwned"),
            primary_column,
        )
        self.tables[logical_name] = table
        self.records[logical_name] = {}
        url = f"{self.base_url}{API}/EntityDefinitions({table.metadata_id})"
        return empty_response(204, {**_odata_headers(), "OData-EntityId": url})

    def _column_from_metadata(self, body: JsonDict) -> ColumnDef:
        kinds = {
            "Microsoft.Dynamics.CRM.StringAttributeMetadata": "String",
            "Microsoft.Dynamics.CRM.MemoAttributeMetadata": "Memo",
            "Microsoft.Dynamics.CRM.BooleanAttributeMetadata": "Boolean",
            "Microsoft.Dynamics.CRM.PicklistAttributeMetadata": "Picklist",
            "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata": "DateTime",
            "Microsoft.Dynamics.CRM.IntegerAttributeMetadata": "Integer",
            "Microsoft.Dynamics.CRM.MoneyAttributeMetadata": "Money",
            "Microsoft.Dynamics.CRM.DecimalAttributeMetadata": "Decimal",
        }
        kind = kinds.get(str(body.get("@odata.type", "")).lstrip("#"))
        schema_name = str(body.get("SchemaName") or "")
        if kind is None or not schema_name:
            raise query_error(f"Unsupported or incomplete attribute metadata: @odata.type={body.get('@odata.type')!r}.")
        if kind in ("String", "Memo") and not isinstance(body.get("MaxLength"), int):
            raise query_error(f"MaxLength is required for {schema_name}.")
        options: dict[int, str] = {}
        if kind == "Picklist":
            option_set = body.get("OptionSet") or {}
            for option in option_set.get("Options") or []:
                options[int(option["Value"])] = label_text(option.get("Label"))
            if not options:
                raise query_error(f"The choice column {schema_name} needs OptionSet.Options.")
        default = body.get("DefaultValue") if kind == "Boolean" else None
        return ColumnDef(
            schema_name.lower(),
            kind,
            schema_name=schema_name,
            display_name=label_text(body.get("DisplayName")),
            max_length=body.get("MaxLength") if kind in ("String", "Memo") else None,
            options=options,
            default=bool(default) if kind == "Boolean" else None,
            date_only=body.get("Format") == "DateOnly",
            custom=True,
        )

    @route("GET", API + r"/EntityDefinitions\({key}\)/Attributes", query=METADATA_LIST_OPTIONS)
    @route("GET", API + r"/EntityDefinitions\({key}\)/Attributes/{cast}", query=METADATA_LIST_OPTIONS)
    @api
    def list_attributes(self, request: Request, caller: Caller) -> Response:
        """Every column, or with a type cast segment (`/Microsoft.Dynamics.CRM.PicklistAttributeMetadata`) those of that type."""
        table = self._metadata_table(request.path_params["key"])
        options = parse_options(request.arg)
        items = [column.metadata() for column in table.columns.values()]
        cast = request.path_params.get("cast")
        if cast is not None:
            items = [item for item in items if item["@odata.type"] == f"#{_attribute_cast(cast)}"]
        return json_response(
            200, {"value": [self._project(item, options) for item in _filter_metadata(items, options, "Attribute")]}
        )

    @route("GET", API + r"/EntityDefinitions\({key}\)/Attributes\({attribute}\)", query=RECORD_OPTIONS)
    @route("GET", API + r"/EntityDefinitions\({key}\)/Attributes\({attribute}\)/{cast}", query=RECORD_OPTIONS)
    @api
    def get_attribute(self, request: Request, caller: Caller) -> Response:
        table = self._metadata_table(request.path_params["key"])
        column = self._metadata_column(table, request.path_params["attribute"])
        metadata = column.metadata()
        cast = request.path_params.get("cast")
        if cast is not None and metadata["@odata.type"] != f"#{_attribute_cast(cast)}":
            # Dataverse answers a cast to another type as a missing resource.
            raise ODataError(404, NOT_FOUND_CODE, f"The attribute {column.logical_name} is not a {cast}.")
        return json_response(200, self._project(metadata, parse_options(request.arg)))

    def _metadata_column(self, table: TableDef, key_segment: str) -> ColumnDef:
        key = unquote(key_segment)
        found = re.fullmatch(r"LogicalName='([^']+)'", key)
        for column in table.columns.values():
            if (found and column.logical_name == found.group(1)) or column.metadata_id == key:
                return column
        raise ODataError(404, NOT_FOUND_CODE, f"Could not find an attribute with key {key} on {table.logical_name}.")

    @route("POST", API + r"/EntityDefinitions\({key}\)/Attributes")
    @api
    def create_attribute(self, request: Request, caller: Caller) -> Response:
        table = self._metadata_table(request.path_params["key"])
        column = self._column_from_metadata(_json_body(request))
        self._check_prefix(request, column.schema_name)
        if column.logical_name in table.columns:
            raise ODataError(
                400,
                "0x80047013",
                f"An attribute with the name {column.schema_name} already exists on {table.logical_name}.",
            )  # unverified code
        table.add(column)
        for record in self.records[table.logical_name].values():
            record.setdefault(column.logical_name, column.default)
        url = f"{self.base_url}{API}/EntityDefinitions(LogicalName='{table.logical_name}')/Attributes({column.metadata_id})"
        return empty_response(204, {**_odata_headers(), "OData-EntityId": url})

    @route("PUT", API + r"/EntityDefinitions\({key}\)/Attributes\({attribute}\)")
    @api
    def put_attribute(self, request: Request, caller: Caller) -> Response:
        table = self._metadata_table(request.path_params["key"])
        existing = self._metadata_column(table, request.path_params["attribute"])
        updated = self._column_from_metadata(_json_body(request))
        if updated.logical_name != existing.logical_name or updated.type != existing.type:
            raise ODataError(400, INVALID_ARGUMENT_CODE, "An attribute's name and type cannot be changed.")
        existing.display_name = updated.display_name or existing.display_name
        existing.max_length = updated.max_length or existing.max_length
        if (request.header("mscrm.mergelabels") or "").lower() != "true" and not updated.display_name:
            existing.display_name = ""
        return empty_response(204, _odata_headers())

    @route("POST", API + "/InsertOptionValue")
    @api
    def insert_option_value(self, request: Request, caller: Caller) -> Response:
        body = _json_body(request)
        table = self.tables.get(str(body.get("EntityLogicalName")))
        column = table.columns.get(str(body.get("AttributeLogicalName"))) if table else None
        if column is None or column.type != "Picklist":
            raise query_error("EntityLogicalName / AttributeLogicalName do not name a choice column.")
        value = body.get("Value")
        if not isinstance(value, int) or value in column.options:
            raise ODataError(400, INVALID_ARGUMENT_CODE, f"The option value {value!r} is missing or already exists.")
        column.options[value] = label_text(body.get("Label"))
        return json_response(200, {"NewOptionValue": value})

    @route("GET", API + r"/EntityDefinitions\({key}\)/Keys", query=METADATA_LIST_OPTIONS)
    @api
    def list_keys(self, request: Request, caller: Caller) -> Response:
        table = self._metadata_table(request.path_params["key"])
        options = parse_options(request.arg)
        items = _filter_metadata([self._key_metadata(table, key) for key in table.keys.values()], options, "EntityKey")
        return json_response(200, {"value": [self._project(item, options) for item in items]})

    @route("POST", API + r"/EntityDefinitions\({key}\)/Keys")
    @api
    def create_key(self, request: Request, caller: Caller) -> Response:
        table = self._metadata_table(request.path_params["key"])
        body = _json_body(request)
        schema_name = str(body.get("SchemaName") or "")
        attributes = body.get("KeyAttributes")
        if not schema_name or not isinstance(attributes, list) or not attributes:
            raise query_error("SchemaName and KeyAttributes are required for an alternate key.")
        self._check_prefix(request, schema_name)
        for attribute in attributes:
            if attribute not in table.columns:
                raise query_error(f"The key attribute '{attribute}' does not exist on {table.logical_name}.")
        if schema_name.lower() in table.keys:
            raise ODataError(400, "0x80047013", f"A key with the name {schema_name} already exists.")  # unverified code
        key = KeyDef(
            schema_name.lower(), schema_name, label_text(body.get("DisplayName")), tuple(attributes), time.monotonic()
        )
        table.keys[key.logical_name] = key
        url = f"{self.base_url}{API}/EntityDefinitions(LogicalName='{table.logical_name}')/Keys({key.metadata_id})"
        return empty_response(204, {**_odata_headers(), "OData-EntityId": url})

    @route("GET", API + r"/RelationshipDefinitions\({key}\)")
    @api
    def get_relationship(self, request: Request, caller: Caller) -> Response:
        key = unquote(request.path_params["key"])
        found = re.fullmatch(r"SchemaName='([^']+)'", key)
        for schema_name, relationship in self.relationships.items():
            if (found and schema_name == found.group(1)) or relationship["MetadataId"] == key:
                return json_response(200, relationship)
        raise ODataError(404, NOT_FOUND_CODE, f"Could not find a relationship with key {key}.")

    @route("POST", API + "/RelationshipDefinitions")
    @api
    def create_relationship(self, request: Request, caller: Caller) -> Response:
        body = _json_body(request)
        if str(body.get("@odata.type", "")).lstrip("#") != "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata":
            raise query_error("Only OneToManyRelationshipMetadata is supported by the sandbox.")
        schema_name = str(body.get("SchemaName") or "")
        self._check_prefix(request, schema_name)
        if schema_name in self.relationships:
            raise ODataError(
                400, "0x80047013", f"A relationship with the name {schema_name} already exists."
            )  # unverified
        referenced = self.tables.get(str(body.get("ReferencedEntity")))
        referencing = self.tables.get(str(body.get("ReferencingEntity")))
        lookup = body.get("Lookup") or {}
        if referenced is None or referencing is None or not lookup.get("SchemaName"):
            raise query_error("ReferencedEntity, ReferencingEntity and Lookup.SchemaName must name existing tables.")
        lookup_name = str(lookup["SchemaName"]).lower()
        navigation = str(body.get("ReferencingEntityNavigationPropertyName") or lookup_name)
        collection = str(body.get("ReferencedEntityNavigationPropertyName") or schema_name)
        referencing.add(
            ColumnDef(
                lookup_name,
                "Lookup",
                schema_name=str(lookup["SchemaName"]),
                display_name=label_text(lookup.get("DisplayName")),
                custom=True,
                navigations={navigation: referenced.logical_name},
            )
        )
        referenced.collections[collection] = (referencing.logical_name, lookup_name)
        metadata_id = new_metadata_id()
        self.relationships[schema_name] = {
            "MetadataId": metadata_id,
            "SchemaName": schema_name,
            "ReferencedEntity": referenced.logical_name,
            "ReferencingEntity": referencing.logical_name,
            "ReferencingAttribute": lookup_name,
            "ReferencedEntityNavigationPropertyName": collection,
            "ReferencingEntityNavigationPropertyName": navigation,
        }
        url = f"{self.base_url}{API}/RelationshipDefinitions({metadata_id})"
        return empty_response(204, {**_odata_headers(), "OData-EntityId": url})

    @route("POST", API + "/PublishXml")
    @api
    def publish_xml(self, request: Request, caller: Caller) -> Response:
        body = _json_body(request)
        xml = body.get("ParameterXml")
        if not isinstance(xml, str) or "<importexportxml>" not in xml:
            raise query_error("ParameterXml must be an <importexportxml> document.")
        self.publishes.append(xml)
        return empty_response(204, _odata_headers())

    @route("POST", API + "/PublishAllXml")
    @api
    def publish_all_xml(self, request: Request, caller: Caller) -> Response:
        self.publishes.append("<all/>")
        return empty_response(204, _odata_headers())

    # ---- control routes ---------------------------------------------------------------------------------
    @route("POST", "/_sandbox/demo-data")
    @control
    def _control_demo_data(self, request: Request) -> Response:
        seed_demo_data(self)
        return empty_response(204)

    @route("POST", "/_sandbox/seller/{entity_set}")
    @control
    def _control_seller_create(self, request: Request) -> Response:
        table = self.table_by_set(request.path_params["entity_set"])
        changes = self._changes(table, _json_body(request), allow_state=False)
        record = self.insert(table.logical_name, changes, Caller(SELLER_USER_ID))
        return json_response(201, self.render(table, record, QueryOptions(), False))

    @route("PATCH", "/_sandbox/seller/{entity_set}/{record_id}")
    @control
    def _control_seller_update(self, request: Request) -> Response:
        table = self.table_by_set(request.path_params["entity_set"])
        key = {table.primary_id: request.path_params["record_id"]}
        record = self.find(table, key)
        if record is None:
            raise self._not_found(table, key)
        changes = self._changes(table, _json_body(request), allow_state=True)
        self._guard_state_change(table, record, changes)
        self.update(table, record, changes, Caller(SELLER_USER_ID))
        return json_response(200, self.render(table, record, QueryOptions(), False))

    @route("DELETE", "/_sandbox/seller/{entity_set}/{record_id}")
    @control
    def _control_seller_delete(self, request: Request) -> Response:
        table = self.table_by_set(request.path_params["entity_set"])
        key = {table.primary_id: request.path_params["record_id"]}
        record = self.find(table, key)
        if record is None:
            raise self._not_found(table, key)
        self.delete(table, str(record[table.primary_id]))
        return empty_response(204)

    @route("POST", "/_sandbox/seller/actions/{action}")
    @control
    def _control_seller_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("WinOpportunity", "LoseOpportunity"):
            raise query_error(f"Seller actions are WinOpportunity and LoseOpportunity, not '{action}'.")
        return self._close_opportunity(request, Caller(SELLER_USER_ID), won=action == "WinOpportunity")

    @route("POST", "/_sandbox/seller/{entity_set}/{record_id}/QualifyLead")
    @control
    def _control_seller_qualify_lead(self, request: Request) -> Response:
        bound = Request(
            request.method,
            request.path,
            request.query,
            request.headers,
            request.body,
            path_params={"entity_set": request.path_params["entity_set"], "key": request.path_params["record_id"]},
        )
        qualify: Callable[[DataverseSimulator, Request, Caller], Response] = DataverseSimulator.qualify_lead.__wrapped__  # type: ignore[attr-defined]
        return qualify(self, bound, Caller(SELLER_USER_ID))


def _odata_headers() -> dict[str, str]:
    return {"OData-Version": "4.0"}


def _json_body(request: Request) -> JsonDict:
    try:
        body = request.json()
    except ValueError as error:
        raise query_error(f"The request body is not valid JSON: {error}.") from error
    if not isinstance(body, dict):
        raise query_error("The request body must be a JSON object.")
    return body


def _attribute_cast(segment: str) -> str:
    """`Microsoft.Dynamics.CRM.PicklistAttributeMetadata` (a documented cast) or Dataverse's 404 for the segment."""
    name = segment.removeprefix("Microsoft.Dynamics.CRM.")
    if segment == name or name not in {*ATTRIBUTE_METADATA_TYPES, "AttributeMetadata", "EnumAttributeMetadata"}:
        raise ODataError(404, "0x8006088a", f"Resource not found for the segment '{segment}'.")
    return segment


def _filter_metadata(items: list[JsonDict], options: QueryOptions, kind: str) -> list[JsonDict]:
    """`$filter` over metadata; a property no item has is refused (Dataverse's 400), never read as null."""
    if options.filter is None:
        return items
    known = {name for item in items for name in item}
    unknown = sorted(properties_of(options.filter) - known)
    if unknown and items:
        raise query_error(
            f"Could not find a property named '{unknown[0]}' on type 'Microsoft.Dynamics.CRM.{kind}Metadata'."
        )
    return [item for item in items if evaluate(options.filter, item)]


def _key_equal(stored: Any, wanted: Any) -> bool:
    if isinstance(stored, str) and isinstance(wanted, str):
        return stored.casefold() == wanted.casefold()
    if isinstance(wanted, Decimal) and isinstance(stored, int | float):
        return Decimal(str(stored)) == wanted
    return bool(stored == wanted)


def _wire_view(table: TableDef, record: JsonDict) -> JsonDict:
    """The record under its wire names (lookups as `_x_value`), which is what `$filter` sees."""
    return {column.wire_name: record.get(name) for name, column in table.columns.items()}


# ---- demo data -----------------------------------------------------------------------------------------
def seed_demo_data(simulator: DataverseSimulator) -> None:
    """A small org for `make run`: solution catalog, a customer with contacts and two opportunities.

    Needs the connector's schema (a provisioned org); written as the demo seller.
    """
    seller = Caller(SELLER_USER_ID)
    with simulator.lock:
        if "pcs_solutiondetail" not in simulator.tables:
            raise RuntimeError("seed_demo_data needs the connector's schema: provision the org first")
        for solution_id, name, publisher in (
            ("SOL-1001", "Contoso Analytics on Azure", "Contoso"),
            ("SOL-1002", "Fabrikam Secure Edge", "Fabrikam"),
        ):
            simulator.insert(
                "pcs_solutiondetail",
                {"pcs_name": name, "pcs_solutionid": solution_id, "pcs_publisher": publisher, "pcs_solutiontype": "3P"},
                seller,
            )
        account = simulator.insert(
            "account",
            {
                "name": "O'Brien & Co",
                "address1_postalcode": "D02 X285",
                "address1_city": "Dublin",
                "address1_country": "IE",
            },
            seller,
        )
        contact = simulator.insert(
            "contact",
            {
                "firstname": "Aoife",
                "lastname": "O'Brien",
                "emailaddress1": "aoife@obrien.example",
                "parentcustomerid": account["accountid"],
            },
            seller,
        )
        euro = next(
            currency_id
            for currency_id, row in simulator.records["transactioncurrency"].items()
            if row["isocurrencycode"] == "EUR"
        )

        def option(column: str, label: str) -> int:
            options = simulator.tables["opportunity"].columns[column].options
            return next(value for value, text in options.items() if text == label)

        for name, value, sync in (
            ("Data platform modernisation", 120000, True),
            ("Edge security rollout", 45000, False),
        ):
            simulator.insert(
                "opportunity",
                {
                    "name": name,
                    "estimatedvalue": value,
                    "estimatedclosedate": (dt.date.today() + dt.timedelta(days=60)).isoformat(),
                    "parentaccountid": account["accountid"],
                    "customerid": account["accountid"],
                    "parentcontactid": contact["contactid"],
                    "transactioncurrencyid": euro,
                    "pcs_syncwithpartnercenter": sync,
                    "pcs_helpneeded": 727000002 if sync else None,
                    # a co-sell names its FY26 Solution Area / Play and Partner Role (shared/partner_center/taxonomy)
                    **({column: option(column, label) for column, label in _DEMO_COSELL.items()} if sync else {}),
                    "description": "Demo opportunity from the sandbox Dataverse.",
                },
                seller,
            )


def _frozen(moment: dt.datetime) -> dt.datetime:
    return moment


def write_as_seller(
    simulator: DataverseSimulator, logical_name: str, writes: Iterable[tuple[str | None, JsonDict, dt.datetime]]
) -> list[str]:
    """Test and benchmark control: a seller's mass update or data import in one go, each write at
    its own org time (`(record id or None to create, values, when)`); returns the record ids."""
    seller = Caller(SELLER_USER_ID)
    ids: list[str] = []
    with simulator.lock:
        clock = simulator.clock
        try:
            for record_id, values, when in writes:
                simulator.clock = functools.partial(_frozen, when)
                if record_id is None:
                    ids.append(
                        str(simulator.insert(logical_name, values, seller)[simulator.tables[logical_name].primary_id])
                    )
                else:
                    simulator.update(
                        simulator.tables[logical_name], simulator.records[logical_name][record_id], values, seller
                    )
                    ids.append(record_id)
        finally:
            simulator.clock = clock
    return ids


_DEMO_COSELL = {
    "pcs_solutionarea": "Cloud and AI Platforms",
    "pcs_solutionplay": "Unify your Data Platform",
    "pcs_partnerrole": "Implementation",
}


def dataverse_factory(**options: Any) -> Callable[[str], DataverseSimulator]:
    """`serve(dataverse_factory(demo_data=True), port=7103)`: builds the simulator with its URL."""

    def build(base_url: str) -> DataverseSimulator:
        return DataverseSimulator(base_url, **options)

    return build


def main() -> None:
    """`python -m sandbox.dataverse`: serve a provisioned demo org on the stable sandbox port."""
    from sandbox.server import serve

    running = serve(dataverse_factory(demo_data=True), port=credentials.DATAVERSE_PORT)
    print(f"Dataverse simulator on {running.url}{API}/ (Ctrl+C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        running.stop()


if __name__ == "__main__":
    main()
