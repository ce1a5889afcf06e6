"""The field registry: every field the connector syncs, defined once.

One `FieldSpec` per neutral field says what it is called in the audit, which way it flows, how
each side reads it, how two values compare, how it goes on the Partner Center wire and into a
CRM write, and what Partner Center requires of it. Views (shared/mapping/views.py), the merge
(shared/sync/merge.py), JSON Patch building (shared/mapping/to_partner_center.py), CRM writes
(shared/mapping/to_crm.py), validation (shared/mapping/rules.py), audit labels and the docs table
(`python -m shared fields-reference`) all iterate `FIELDS`; none of them lists field names.

Adding a field mapped both ways: one entry here, the value on `CrmRecord` / `RecordUpdate`
(shared/crm/port.py) and each adapter's column name.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from shared.crm.port import CrmObjectKind, CrmRecord
from shared.mapping.countries import CountryError, country_code
from shared.mapping.taxonomy import Kind, taxonomy
from shared.model.referral import ASSISTANCE_REQUEST_CODES, Referral
from shared.partner_center.contract import contract

View = dict[str, Any]
"""A side's neutral view: field name -> normalised JSON-able value. It is what the link snapshot
stores, so it stays a plain mapping; only names in `FIELDS` ever appear as keys. An absent key
means "this side has no opinion" (a single-currency CRM has no currency), never "cleared"."""

Direction = Literal["both", "crm_to_pc", "pc_to_crm", "status"]
"""`both`: merged three-way; `crm_to_pc`: the CRM decides (partner team = record owner);
`pc_to_crm`: read-only mirrors of Partner Center on the CRM record; `status`: read by both sides,
decided by the transition tables of shared/mapping/status.py."""

CrmWrite = Literal["column", "account", "contacts", "solutions", "none"]
"""How a value reaches an opportunity: a column of the record, the related customer account, the
contact roles / connections, or the solution rows. A lead carries account and first contact in
its own columns, and solutions as rows."""

MICROSOFT_ORGANIZATION_ID = "msft"
"""`organizationId` of Microsoft's own referral in an engagement (reference 1.3, 1.6)."""


class _Absent:
    """A side that has no place for the field (no opinion); distinct from None (empty)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class ReadContext:
    """What reading a side needs beyond the record itself."""

    accept_country_names: bool = False
    pending_stage: str | None = None
    """The CRM's stage for an unaccepted referral (a CRM capability); None when it has none."""
    lead_has_name: bool = True
    """False where a lead has no deal name (Salesforce: its Company is the customer)."""
    referral_link_template: str = ""
    related: Referral | None = None
    """Microsoft's referral of the same engagement, when an event about it brought us here."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    """The neutral name: key in views and link snapshots."""
    label: str | None
    """As sellers read it in the audit; None for mirrors written silently."""
    direction: Direction
    read_pc: Callable[[Referral, ReadContext], Any]
    read_crm: Callable[[CrmRecord, ReadContext], Any]
    """May return ABSENT: the CRM has no place for it."""
    same: Callable[[Any, Any], bool] = operator.eq
    """Do both sides already say the same (so nothing needs writing)?"""
    pc_path: tuple[str, ...] | None = None
    """Where a JSON Patch writes it; None: never patched (or by `patch_values`)."""
    patch_values: Callable[[Any, bool], list[tuple[tuple[str, ...], Any]]] | None = None
    """For a field spread over several wire members: (path, wire value) pairs; bool = accept country names."""
    to_wire: Callable[[Any], Any] = lambda value: value
    crm_write: CrmWrite = "column"
    crm_columns: Callable[[Any, CrmObjectKind], dict[str, Any]] | None = None
    """`RecordUpdate` values for the record's own columns."""
    problems: Callable[[Any, bool], list[str]] | None = None
    """What Partner Center refuses about the value (bool = accept country names)."""
    required_for: Literal["every", "cosell", "new_cosell"] | None = None
    """Which referrals Partner Center checks it for (co-sell: help requested; new co-sell: only
    when creating one, for members Partner Center takes on create only)."""
    keep_one_way: Callable[[Any, Any], str | None] | None = None
    """A Partner Center upgrade the CRM cannot undo: (pc value, crm value) -> why it is kept."""
    connector_column: bool = False
    """Its CRM column is one of the connector's own fields (SPEC 1.4), which converting a lead
    does not carry over to the opportunity."""

    @property
    def merged(self) -> bool:
        return self.direction in ("both", "crm_to_pc")


# ---- normalising ------------------------------------------------------------------------------------
def text(value: Any) -> str | None:
    if value is None:
        return None
    stripped = str(value).strip()
    return stripped or None


def decimal_text(value: Any) -> str | None:
    """A number as a canonical decimal string ("120000", "99.5"), so 1.2E+5 == 120000.0 == "120000"."""
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    if number == number.to_integral_value():
        return str(number.quantize(Decimal(1)))
    return format(number.normalize(), "f")


def date_text(value: dt.date | dt.datetime | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).date().isoformat()
    return value.isoformat()


def contact(first: Any, last: Any, email: Any, phone: Any, title: Any) -> dict[str, Any]:
    mail = text(email)
    return {
        "first_name": text(first),
        "last_name": text(last),
        "email": mail.lower() if mail else None,
        "phone": text(phone),
        "title": text(title),
    }


def _contact_order(item: dict[str, Any]) -> tuple[str, str]:
    return (item.get("email") or "", (item.get("last_name") or "").casefold())


def normal_country(value: Any, *, accept_names: bool) -> str | None:
    """The ISO code when the text clearly is one country; otherwise the text as typed (validation
    reports it in plain words, and comparing raw text keeps the change visible)."""
    typed = text(value)
    if typed is None:
        return None
    try:
        return country_code(typed, accept_names=accept_names)
    except CountryError:
        return typed


def customer(
    name: Any, street: Any, city: Any, state: Any, postal_code: Any, country: Any, *, accept_names: bool
) -> dict[str, Any] | None:
    value = {
        "name": text(name),
        "street": text(street),
        "city": text(city),
        "state": text(state),
        "postal_code": text(postal_code),
        "country": normal_country(country, accept_names=accept_names),
    }
    return value if any(value.values()) else None


def split_name(full_name: str | None) -> tuple[str | None, str | None]:
    """ "Ada Lovelace" -> ("Ada", "Lovelace"); Partner Center wants the two parts separately."""
    if not full_name or not full_name.strip():
        return None, None
    first, _, last = full_name.strip().rpartition(" ")
    return (first or None), last


def asks_microsoft_for_help(view: View) -> bool:
    """A co-sell referral: the partner asked Microsoft for help ("Unknown" is not a request)."""
    return view.get("help_needed") not in (None, "", "Unknown")


def _solutions(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: str(item["id"]))


# ---- comparing across sides ----------------------------------------------------------------------------
def _same_people(pc_value: Any, crm_value: Any) -> bool:
    def keys(people: Any) -> list[str]:
        return sorted((item.get("email") or f"~{(item.get('last_name') or '').casefold()}") for item in people or [])

    return keys(pc_value) == keys(crm_value)


def _same_solutions(pc_value: Any, crm_value: Any) -> bool:
    return sorted(str(item["id"]) for item in pc_value or []) == sorted(str(item["id"]) for item in crm_value or [])


def _same_customer(pc_value: Any, crm_value: Any) -> bool:
    def folded(value: Any) -> Any:
        if not value:
            return None
        return {key: (item.casefold() if isinstance(item, str) else item) for key, item in value.items()}

    return bool(folded(pc_value) == folded(crm_value))


def _same_flag(pc_value: Any, crm_value: Any) -> bool:
    return bool(pc_value) == bool(crm_value)


# ---- Partner Center wire -------------------------------------------------------------------------------
def _compact(item: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if value is not None}


def wire_member(item: dict[str, Any]) -> dict[str, Any]:
    return _compact(
        {
            "firstName": item.get("first_name"),
            "lastName": item.get("last_name"),
            "email": item.get("email"),
            "phoneNumber": item.get("phone"),
            "title": item.get("title"),
        }
    )


def wire_members(value: Any) -> list[dict[str, Any]]:
    return [wire_member(item) for item in value or []]


def wire_solutions(value: Any) -> list[dict[str, Any]]:
    return [
        _compact(
            {
                "id": item["id"],
                "name": item.get("name"),
                "publisherName": item.get("publisher"),
                "solutionType": item.get("type"),
            }
        )
        for item in value or []
    ]


def wire_address(value: Any, accept_country_names: bool) -> dict[str, Any]:
    item = value or {}
    country = item.get("country")
    return _compact(
        {
            "addressLine1": item.get("street"),
            "city": item.get("city"),
            "state": item.get("state"),
            "postalCode": item.get("postal_code"),
            "country": country_code(country, accept_names=accept_country_names) if country else None,
        }
    )


def _customer_patch(value: Any, accept_country_names: bool) -> list[tuple[tuple[str, ...], Any]]:
    item = value or {}
    return [
        (("customerProfile", "name"), item.get("name")),
        (("customerProfile", "address"), wire_address(item, accept_country_names)),
    ]


# ---- CRM columns -----------------------------------------------------------------------------------------
def _column(column: str, convert: Callable[[Any], Any] = lambda value: value, *, lead: bool = True) -> Any:
    def columns(value: Any, kind: CrmObjectKind) -> dict[str, Any]:
        return {column: convert(value)} if lead or kind != "lead" else {}

    return columns


def _lead_company(value: Any, kind: CrmObjectKind) -> dict[str, Any]:
    """A lead carries its customer in its own columns (an opportunity refers to an account)."""
    if kind != "lead":
        return {}
    item = value or {}
    return {
        "lead_company": item.get("name"),
        "lead_street": item.get("street"),
        "lead_city": item.get("city"),
        "lead_state": item.get("state"),
        "lead_postal_code": item.get("postal_code"),
        "lead_country": item.get("country"),
    }


def _lead_contact(value: Any, kind: CrmObjectKind) -> dict[str, Any]:
    """A lead carries its first customer contact itself."""
    if kind != "lead":
        return {}
    first = value[0] if value else {}
    return {
        "lead_first_name": first.get("first_name"),
        "lead_last_name": first.get("last_name") or first.get("email") or "(unknown)",
        "lead_email": first.get("email"),
        "lead_phone": first.get("phone"),
    }


# ---- validation ------------------------------------------------------------------------------------------
def _name_problems(value: Any, accept_country_names: bool) -> list[str]:
    return [] if value else ["the opportunity needs a name"]


def _customer_problems(value: Any, accept_country_names: bool) -> list[str]:
    item = value or {}
    if not item.get("name"):
        return ["choose the customer account"]
    try:
        country_code(item.get("country"), accept_names=accept_country_names)
    except CountryError as error:
        return [str(error)]
    return []


def _help_problems(value: Any, accept_country_names: bool) -> list[str]:
    if value in ASSISTANCE_REQUEST_CODES:
        return []
    return [
        f"'{value}' is not a valid 'How can Microsoft help?' value "
        f"(choose one of {', '.join(ASSISTANCE_REQUEST_CODES[1:])})"
    ]


def _contact_problems(value: Any, accept_country_names: bool) -> list[str]:
    if any(item.get("email") for item in value or []):
        return []
    return ["add a customer contact with an email address (Microsoft needs one when you ask for help)"]


def _solution_problems(value: Any, accept_country_names: bool) -> list[str]:
    return [] if value else ["add at least one Microsoft Partner Center solution"]


def _deal_value_problems(value: Any, accept_country_names: bool) -> list[str]:
    if value in (None, ""):
        return ["enter a deal value greater than 0"]
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return [f"the deal value '{value}' is not a number"]
    return [] if amount > 0 else ["deal value must be greater than 0"]


def _currency_problems(value: Any, accept_country_names: bool) -> list[str]:
    return [] if value else ["choose the deal currency"]


def _close_date_problems(value: Any, accept_country_names: bool) -> list[str]:
    return [] if value else ["set the close date"]


# ---- one-way upgrades (reference 1.5) --------------------------------------------------------------------
def _keep_visible(pc_value: Any, crm_value: Any) -> str | None:
    if pc_value and not crm_value:
        return "visibility to Microsoft sellers cannot be turned off once the referral is shared; kept visible"
    return None


def _keep_help(pc_value: Any, crm_value: Any) -> str | None:
    if asks_microsoft_for_help({"help_needed": pc_value}) and not asks_microsoft_for_help({"help_needed": crm_value}):
        return "a co-sell referral cannot go back to not asking Microsoft for help; kept the help request"
    return None


# ---- reading each side -------------------------------------------------------------------------------------
def _pc_customer(referral: Referral, context: ReadContext) -> Any:
    profile = referral.customer_profile
    address = profile.address if profile else None
    return customer(
        profile.name if profile else None,
        " ".join(filter(None, [address.address_line1, address.address_line2])) if address else None,
        address.city if address else None,
        address.state if address else None,
        address.postal_code if address else None,
        address.country if address else None,
        accept_names=True,
    )


def _crm_customer(record: CrmRecord, context: ReadContext) -> Any:
    account = record.account
    return customer(
        account.name if account else None,
        account.street if account else None,
        account.city if account else None,
        account.state if account else None,
        account.postal_code if account else None,
        account.country if account else None,
        accept_names=context.accept_country_names,
    )


def _pc_contacts(referral: Referral, context: ReadContext) -> Any:
    profile = referral.customer_profile
    members = profile.team if profile else []
    return sorted(
        (contact(item.first_name, item.last_name, item.email, item.phone_number, item.title) for item in members),
        key=_contact_order,
    )


def _pc_solutions(referral: Referral, context: ReadContext) -> Any:
    requirements = referral.details.requirements if referral.details else None
    return _solutions(
        [
            {
                "id": item.id,
                "name": text(item.name),
                "publisher": text(item.publisher_name),
                "type": text(item.solution_type),
            }
            for item in (requirements.solutions if requirements else [])
            if item.id
        ]
    )


def _crm_solutions(record: CrmRecord, context: ReadContext) -> Any:
    return _solutions(
        [
            {
                "id": item.solution_id,
                "name": text(item.name),
                "publisher": text(item.publisher),
                "type": text(item.solution_type),
            }
            for item in record.solutions
        ]
    )


def _pc_microsoft_crm_id(referral: Referral, context: ReadContext) -> Any:
    """`trackingInfo.microsoftMsxId` of the referral or of Microsoft's related one; none: no opinion."""
    for item in (referral, context.related):
        if item is not None and item.tracking_info and item.tracking_info.microsoft_msx_id:
            return item.tracking_info.microsoft_msx_id
    return ABSENT


def pc_lifecycle(referral: Referral) -> str:
    """New -> pending, Active -> active, Closed -> won/lost/declined/expired (shared/mapping/status.py)."""
    if referral.status == "Closed":
        return {"Won": "won", "Declined": "declined", "Expired": "expired"}.get(referral.substatus or "", "lost")
    return "active" if referral.status == "Active" else "pending"


def crm_lifecycle(record: CrmRecord, context: ReadContext) -> str:
    """Where the CRM record stands, in the one vocabulary of shared/mapping/status.py."""
    stage = record.stage
    if record.ref.kind == "lead":
        if stage.is_qualified:
            return "qualified"
        return "disqualified" if stage.is_disqualified else "active"
    if stage.is_closed:
        return "won" if stage.is_won else "lost"
    if context.pending_stage is not None and stage.stage_name == context.pending_stage:
        return "pending"
    return "active"


def status_mirror(referral: Referral) -> str | None:
    """The CRM's read-only Referral status field, e.g. "Active / Accepted" (SPEC 1.4)."""
    if not referral.status:
        return None
    return f"{referral.status} / {referral.substatus}" if referral.substatus else referral.status


def _crm_name(record: CrmRecord, context: ReadContext) -> Any:
    return ABSENT if record.ref.kind == "lead" and not context.lead_has_name else text(record.name)


def _crm_currency(record: CrmRecord, context: ReadContext) -> Any:
    # single-currency orgs have no currency field: no opinion
    return ABSENT if record.currency is None else (record.currency.strip().upper() or None)


def _crm_team(record: CrmRecord, context: ReadContext) -> Any:
    if not record.owner_email:
        return []
    return [contact(*split_name(record.owner_name), record.owner_email, None, None)]


def _pc_team(referral: Referral, context: ReadContext) -> Any:
    return sorted(
        (contact(item.first_name, item.last_name, item.email, item.phone_number, item.title) for item in referral.team),
        key=_contact_order,
    )


def _not_in_pc(referral: Referral, context: ReadContext) -> Any:
    return ABSENT


def _attribute(referral: Referral, attribute_type: str) -> str | None:
    """The id of a `details.requirements.additionalRequirements.attributes` item of one type."""
    requirements = referral.details.requirements if referral.details else None
    additional = (requirements.additional_requirements if requirements else None) or {}
    for item in additional.get("attributes") or []:
        if isinstance(item, dict) and item.get("type") == attribute_type:
            return text(item.get("id"))
    return None


def _pc_cosell_member(member: str) -> Callable[[Referral, ReadContext], Any]:
    """A services co-sell member: top-level (what we send) or as a typed attribute (contract.json's note)."""
    attribute_type = contract().create["services_cosell_attribute_types"][member]

    def read(referral: Referral, context: ReadContext) -> Any:
        return text(getattr(referral, _snake(member))) or _attribute(referral, attribute_type)

    return read


def _snake(member: str) -> str:
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in member)


def _taxonomy_problems(kind: Kind) -> Callable[[Any, bool], list[str]]:
    return lambda value, _: taxonomy().problems(kind, value)


def _marketplace_intent_problems(value: Any, accept_country_names: bool) -> list[str]:
    values = contract().create["marketplace_intent"]["values"]
    if value is None or value in values:
        return []
    return [f"'{value}' is not a customer marketplace intent (choose one of {', '.join(values)})"]


def _taxonomy_field(kind: Kind, member: str) -> FieldSpec:
    """An FY26 co-sell field: chosen in the CRM, sent on create, kept by Partner Center afterwards
    (not a patchable path), mirrored to the CRM for incoming referrals."""
    return FieldSpec(
        name=kind,
        label=kind.replace("_", " "),
        direction="both",
        read_pc=_pc_cosell_member(member),
        read_crm=lambda record, _: text(getattr(record.connector, kind)),
        pc_path=(member,),
        crm_columns=_column(kind),
        problems=_taxonomy_problems(kind),
        required_for="new_cosell",
        connector_column=True,
    )


FIELDS: tuple[FieldSpec, ...] = (
    # -- two-way (SPEC 1.2, 1.3) --
    FieldSpec(
        name="name",
        label="name",
        direction="both",
        read_pc=lambda referral, _: text(referral.name),
        read_crm=_crm_name,
        pc_path=("name",),
        crm_columns=_column("name"),
        problems=_name_problems,
        required_for="every",
    ),
    FieldSpec(
        name="deal_value",
        label="deal value",
        direction="both",
        read_pc=lambda referral, _: decimal_text(referral.details.deal_value) if referral.details else None,
        read_crm=lambda record, _: decimal_text(record.deal_value),
        pc_path=("details", "dealValue"),
        to_wire=lambda value: float(Decimal(value)) if value is not None else None,
        crm_columns=_column("deal_value", lambda value: Decimal(value) if value is not None else None),
        problems=_deal_value_problems,
        required_for="cosell",
    ),
    FieldSpec(
        name="currency",
        label="currency",
        direction="both",
        read_pc=lambda referral, _: (
            (text(referral.details.currency) or "").upper() or None if referral.details else None
        ),
        read_crm=_crm_currency,
        pc_path=("details", "currency"),
        crm_columns=_column("currency"),
        problems=_currency_problems,
        required_for="cosell",
    ),
    FieldSpec(
        name="close_date",
        label="close date",
        direction="both",
        read_pc=lambda referral, _: date_text(referral.details.closing_date_time) if referral.details else None,
        read_crm=lambda record, _: date_text(record.close_date),
        pc_path=("details", "closingDateTime"),
        to_wire=lambda value: f"{value}T00:00:00Z" if value else None,
        # a lead has no close date
        crm_columns=_column("close_date", lambda value: dt.date.fromisoformat(value) if value else None, lead=False),
        problems=_close_date_problems,
        required_for="cosell",
    ),
    FieldSpec(
        name="notes",
        label="notes",
        direction="both",
        read_pc=lambda referral, _: text(referral.details.notes) if referral.details else None,
        read_crm=lambda record, _: text(record.notes),
        pc_path=("details", "notes"),
        crm_columns=_column("notes"),
    ),
    FieldSpec(
        name="customer",
        label="customer",
        direction="both",
        read_pc=_pc_customer,
        read_crm=_crm_customer,
        same=_same_customer,
        patch_values=_customer_patch,
        crm_write="account",
        crm_columns=_lead_company,
        problems=_customer_problems,
        required_for="every",
    ),
    FieldSpec(
        name="contacts",
        label="contacts",
        direction="both",
        read_pc=_pc_contacts,
        read_crm=lambda record, _: sorted(
            (contact(item.first_name, item.last_name, item.email, item.phone, item.title) for item in record.contacts),
            key=_contact_order,
        ),
        same=_same_people,
        pc_path=("customerProfile", "team"),
        to_wire=wire_members,
        crm_write="contacts",
        crm_columns=_lead_contact,
        problems=_contact_problems,
        required_for="cosell",
    ),
    FieldSpec(
        name="solutions",
        label="solutions",
        direction="both",
        read_pc=_pc_solutions,
        read_crm=_crm_solutions,
        same=_same_solutions,
        pc_path=("details", "requirements", "solutions"),
        to_wire=wire_solutions,
        crm_write="solutions",
        problems=_solution_problems,
        required_for="cosell",
    ),
    FieldSpec(
        name="help_needed",
        label="help needed",
        direction="both",
        read_pc=lambda referral, _: (
            text(referral.invite_context.assistance_request_code) if referral.invite_context else None
        ),
        read_crm=lambda record, _: text(record.connector.help_needed),
        pc_path=("inviteContext", "assistanceRequestCode"),
        crm_columns=_column("help_needed"),
        problems=_help_problems,
        required_for="cosell",
        keep_one_way=_keep_help,
        connector_column=True,
    ),
    FieldSpec(
        name="visible",
        label="visibility",
        direction="both",
        read_pc=lambda referral, _: bool(
            referral.consent and referral.consent.consent_to_share_referral_with_microsoft_sellers
        ),
        read_crm=lambda record, _: record.connector.visible_to_microsoft,
        same=_same_flag,
        pc_path=("consent", "consentToShareReferralWithMicrosoftSellers"),
        to_wire=bool,
        crm_columns=_column("visible_to_microsoft", bool),
        keep_one_way=_keep_visible,
        connector_column=True,
    ),
    # -- FY26 co-sell fields (values: shared/partner_center/taxonomy) and the customer's marketplace intent --
    _taxonomy_field("solution_area", "solutionArea"),
    _taxonomy_field("solution_play", "solutionPlay"),
    _taxonomy_field("partner_role", "partnerRole"),
    FieldSpec(
        name="marketplace_intent",
        label="customer marketplace intent",
        direction="both",
        # Not stated (a seller's empty field, a referral Microsoft shared without the attribute) is
        # what Partner Center takes, and we send, as HaveNotDecided: both sides read it so, or every
        # such pair would differ on this field forever.
        read_pc=lambda referral, _: (
            _attribute(referral, contract().create["marketplace_intent"]["type"])
            or contract().create["marketplace_intent"]["default"]
        ),
        read_crm=lambda record, _: (
            text(record.connector.marketplace_intent) or contract().create["marketplace_intent"]["default"]
        ),
        pc_path=("details", "requirements", "additionalRequirements", "attributes"),
        to_wire=lambda value: [contract().marketplace_intent(value)],
        crm_columns=_column("marketplace_intent"),
        problems=_marketplace_intent_problems,
        required_for="every",
        connector_column=True,
    ),
    # -- CRM -> Partner Center: the partner team is the record owner; never written to the CRM owner --
    FieldSpec(
        name="team",
        label="partner team",
        direction="crm_to_pc",
        read_pc=_pc_team,
        read_crm=_crm_team,
        same=_same_people,
        pc_path=("team",),
        to_wire=wire_members,
        crm_write="none",
    ),
    # -- where the deal stands: decided by shared/mapping/status.py --
    FieldSpec(
        name="lifecycle",
        label="status",
        direction="status",
        read_pc=lambda referral, _: pc_lifecycle(referral),
        read_crm=crm_lifecycle,
        crm_write="none",
    ),
    FieldSpec(
        name="response",
        label=None,
        direction="status",
        read_pc=_not_in_pc,
        read_crm=lambda record, _: record.connector.referral_response,
        crm_write="none",
    ),
    FieldSpec(
        name="decline_reason",
        label=None,
        direction="status",
        read_pc=_not_in_pc,
        read_crm=lambda record, _: text(record.connector.decline_reason),
        crm_write="none",
    ),
    # -- Partner Center -> CRM read-only mirrors: follow Partner Center whenever they differ --
    FieldSpec(
        name="status_mirror",
        label="status",
        direction="pc_to_crm",
        read_pc=lambda referral, _: status_mirror(referral),
        read_crm=lambda record, _: text(record.connector.referral_status),
        crm_columns=_column("referral_status"),
    ),
    FieldSpec(
        name="engagement_id",
        label=None,
        direction="pc_to_crm",
        read_pc=lambda referral, _: referral.engagement_id,
        read_crm=lambda record, _: text(record.connector.engagement_id),
        crm_columns=_column("engagement_id"),
    ),
    FieldSpec(
        name="referral_link",
        label=None,
        direction="pc_to_crm",
        # built from REFERRAL_LINK_TEMPLATE, so it is not part of Partner Center's stored view
        read_pc=_not_in_pc,
        read_crm=lambda record, _: text(record.connector.referral_link),
        crm_columns=_column("referral_link"),
    ),
    FieldSpec(
        name="microsoft_crm_id",
        label="Microsoft CRM id",
        direction="pc_to_crm",
        read_pc=_pc_microsoft_crm_id,
        read_crm=lambda record, _: text(record.connector.microsoft_crm_id),
        crm_columns=_column("microsoft_crm_id"),
    ),
)

BY_NAME: dict[str, FieldSpec] = {spec.name: spec for spec in FIELDS}


def merged_fields() -> Iterator[FieldSpec]:
    """Fields the three-way merge decides (two-way, and CRM -> Partner Center)."""
    return (item for item in FIELDS if item.merged)


def mirror_fields() -> Iterator[FieldSpec]:
    """Partner Center -> CRM read-only fields."""
    return (item for item in FIELDS if item.direction == "pc_to_crm")


def label(name: str) -> str:
    return BY_NAME[name].label or name


def referral_link(referral: Referral, template: str) -> str:
    return template.format(id=referral.id, engagement_id=referral.engagement_id or "")


_DIRECTION_WORDS = {
    "both": "both ways",
    "crm_to_pc": "CRM -> Partner Center",
    "pc_to_crm": "Partner Center -> CRM (read-only)",
    "status": "both ways, by the status rules (shared/mapping/status.py)",
}


def _wire_paths(item: FieldSpec) -> str:
    if item.direction == "status":
        return "`/status`, `/substatus`, `/statusReason`" if item.name == "lifecycle" else "- (read from the CRM)"
    if item.pc_path:
        return "`/" + "/".join(item.pc_path) + "`"
    if item.patch_values:
        return ", ".join("`/" + "/".join(path) + "`" for path, _ in item.patch_values({}, False))
    return "-"


def reference_table() -> str:
    """The Markdown table of synced fields in docs/sync.md (`python -m shared fields-reference`)."""
    lines = [
        "| Field | Audit label | Direction | Partner Center JSON Patch path | CRM write | Required by Partner Center |",
        "|---|---|---|---|---|---|",
    ]
    for item in FIELDS:
        required = {"every": "every referral", "cosell": "co-sell", "new_cosell": "new co-sell", None: "-"}[
            item.required_for
        ]
        write = {"crm_to_pc": "none (the record owner)", "status": "stage / state (each adapter's stage map)"}.get(
            item.direction, item.crm_write
        )
        if item.direction == "status" and item.name != "lifecycle":
            write = "none (the seller's answer)"
        lines.append(
            f"| `{item.name}` | {item.label or '-'} | {_DIRECTION_WORDS[item.direction]} | {_wire_paths(item)} "
            f"| {write} | {required} |"
        )
    return "\n".join(lines) + "\n"
