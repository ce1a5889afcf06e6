"""Neutral views: what a referral and a CRM record each say about a deal, in the same words.

Both sides are reduced to one flat JSON-able dict of *neutral fields* (below), so the engine can
compare each side with what it said at the last sync (the snapshot in `links`) and with the other
side, field by field. A key that is absent means "this side has no opinion" (e.g. a Salesforce org
without multi-currency has no currency), never "cleared".

Values are normalised so that the same fact compares equal on both sides: decimals as plain
strings, dates as ISO dates, emails lower-cased, lists in a stable order.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from shared.crm.port import CrmRecord
from shared.mapping.countries import CountryError, country_code
from shared.model.referral import Referral

View = dict[str, Any]

MICROSOFT_ORGANIZATION_ID = "msft"
"""`organizationId` of Microsoft's own referral in an engagement (reference 1.3, 1.6)."""

TWO_WAY_FIELDS = (
    "name",
    "deal_value",
    "currency",
    "close_date",
    "notes",
    "customer",
    "contacts",
    "solutions",
    "help_needed",
    "visible",
)
"""Fields a change on either side is carried to the other (SPEC 1.2, 1.3)."""

CRM_TO_PC_FIELDS = ("team",)
"""The partner team is the CRM record owner; Partner Center's team is never written to the CRM owner."""

FIELD_LABELS = {
    "name": "name",
    "deal_value": "deal value",
    "currency": "currency",
    "close_date": "close date",
    "notes": "notes",
    "customer": "customer",
    "contacts": "contacts",
    "solutions": "solutions",
    "help_needed": "help needed",
    "visible": "visibility",
    "team": "partner team",
    "status": "status",
}
"""Plain names of the neutral fields, as sellers read them in the audit."""

PcLifecycle = Literal["pending", "active", "won", "lost", "declined", "expired"]
CrmLifecycle = Literal["pending", "open", "won", "lost", "qualified", "disqualified"]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


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


def _date_text(value: dt.date | dt.datetime | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).date().isoformat()
    return value.isoformat()


def _contact(first: Any, last: Any, email: Any, phone: Any, title: Any) -> dict[str, Any]:
    mail = _text(email)
    return {
        "first_name": _text(first),
        "last_name": _text(last),
        "email": mail.lower() if mail else None,
        "phone": _text(phone),
        "title": _text(title),
    }


def _contact_order(contact: dict[str, Any]) -> tuple[str, str]:
    return (contact.get("email") or "", (contact.get("last_name") or "").casefold())


def normal_country(value: Any, *, accept_names: bool) -> str | None:
    """The ISO code when the text clearly is one country; otherwise the text as typed (validation
    reports it in plain words, and comparing raw text keeps the change visible)."""
    text = _text(value)
    if text is None:
        return None
    try:
        return country_code(text, accept_names=accept_names)
    except CountryError:
        return text


def _customer(
    name: Any, street: Any, city: Any, state: Any, postal_code: Any, country: Any, *, accept_names: bool
) -> dict[str, Any] | None:
    customer = {
        "name": _text(name),
        "street": _text(street),
        "city": _text(city),
        "state": _text(state),
        "postal_code": _text(postal_code),
        "country": normal_country(country, accept_names=accept_names),
    }
    return customer if any(customer.values()) else None


# ---- Partner Center --------------------------------------------------------------------------------
def pc_lifecycle(referral: Referral) -> PcLifecycle:
    """Where the referral stands: New -> pending, Active -> active, Closed -> won/lost/declined/expired."""
    if referral.status == "Closed":
        return {"Won": "won", "Declined": "declined", "Expired": "expired"}.get(  # type: ignore[return-value]
            referral.substatus or "", "lost"
        )
    if referral.status == "Active":
        return "active"
    return "pending"


def status_mirror(referral: Referral) -> str | None:
    """The CRM's read-only Referral status field, e.g. "Active / Accepted" (SPEC 1.4)."""
    if not referral.status:
        return None
    return f"{referral.status} / {referral.substatus}" if referral.substatus else referral.status


def referral_view(referral: Referral, *, related: Referral | None = None) -> View:
    """What Partner Center says. `related` is Microsoft's referral of the same engagement, when an
    event about it brought us here: its `trackingInfo.microsoftMsxId` fills the Microsoft CRM id."""
    details = referral.details
    profile = referral.customer_profile
    address = profile.address if profile else None
    requirements = details.requirements if details else None
    view: View = {
        "name": _text(referral.name),
        "deal_value": decimal_text(details.deal_value) if details else None,
        "currency": (_text(details.currency) or "").upper() or None if details else None,
        "close_date": _date_text(details.closing_date_time) if details else None,
        "notes": _text(details.notes) if details else None,
        "customer": _customer(
            profile.name if profile else None,
            " ".join(filter(None, [address.address_line1, address.address_line2])) if address else None,
            address.city if address else None,
            address.state if address else None,
            address.postal_code if address else None,
            address.country if address else None,
            accept_names=True,
        ),
        "contacts": sorted(
            (
                _contact(member.first_name, member.last_name, member.email, member.phone_number, member.title)
                for member in (profile.team if profile else [])
            ),
            key=_contact_order,
        ),
        "solutions": sorted(
            (
                {
                    "id": solution.id,
                    "name": _text(solution.name),
                    "publisher": _text(solution.publisher_name),
                    "type": _text(solution.solution_type),
                }
                for solution in (requirements.solutions if requirements else [])
                if solution.id
            ),
            key=lambda item: str(item["id"]),
        ),
        "help_needed": _text(referral.invite_context.assistance_request_code) if referral.invite_context else None,
        "visible": bool(referral.consent and referral.consent.consent_to_share_referral_with_microsoft_sellers),
        "team": sorted(
            (
                _contact(member.first_name, member.last_name, member.email, member.phone_number, member.title)
                for member in referral.team
            ),
            key=_contact_order,
        ),
        "lifecycle": pc_lifecycle(referral),
        "status_mirror": status_mirror(referral),
        "engagement_id": referral.engagement_id,
    }
    msx_id = next(
        (
            item.tracking_info.microsoft_msx_id
            for item in (referral, related)
            if item is not None and item.tracking_info and item.tracking_info.microsoft_msx_id
        ),
        None,
    )
    if msx_id:
        view["microsoft_crm_id"] = msx_id
    return view


# ---- CRM ---------------------------------------------------------------------------------------------
def crm_lifecycle(record: CrmRecord, *, pending_stage: str | None) -> CrmLifecycle:
    """Where the CRM record stands. `pending_stage` is the Salesforce hold stage; Dynamics 365 has
    none (None), so there an open opportunity is just "open" and acceptance is the response field."""
    stage = record.stage
    if record.ref.kind == "lead":
        if stage.is_qualified:
            return "qualified"
        return "disqualified" if stage.is_disqualified else "open"
    if stage.is_closed:
        return "won" if stage.is_won else "lost"
    if pending_stage is not None and stage.stage_name == pending_stage:
        return "pending"
    return "open"


def crm_view(
    record: CrmRecord, *, pending_stage: str | None, accept_country_names: bool, lead_has_name: bool = True
) -> View:
    """What the CRM says, in the same neutral fields as `referral_view`.

    `lead_has_name=False` for Salesforce, whose leads have no deal name (their Company is the
    customer): the referral name then has no place on the lead, so the view holds no opinion on it.
    """
    account = record.account
    connector = record.connector
    view: View = {
        "name": _text(record.name),
        "deal_value": decimal_text(record.deal_value),
        "close_date": _date_text(record.close_date),
        "notes": _text(record.notes),
        "customer": _customer(
            account.name if account else None,
            account.street if account else None,
            account.city if account else None,
            account.state if account else None,
            account.postal_code if account else None,
            account.country if account else None,
            accept_names=accept_country_names,
        ),
        "contacts": sorted(
            (
                _contact(contact.first_name, contact.last_name, contact.email, contact.phone, contact.title)
                for contact in record.contacts
            ),
            key=_contact_order,
        ),
        "solutions": sorted(
            (
                {
                    "id": solution.solution_id,
                    "name": _text(solution.name),
                    "publisher": _text(solution.publisher),
                    "type": _text(solution.solution_type),
                }
                for solution in record.solutions
            ),
            key=lambda item: str(item["id"]),
        ),
        "help_needed": _text(connector.help_needed),
        "visible": connector.visible_to_microsoft,
        "team": (
            [_contact(*_split_name(record.owner_name), record.owner_email, None, None)] if record.owner_email else []
        ),
        "lifecycle": crm_lifecycle(record, pending_stage=pending_stage),
        "response": connector.referral_response,
        "decline_reason": _text(connector.decline_reason),
        "status_mirror": _text(connector.referral_status),
        "engagement_id": _text(connector.engagement_id),
        "referral_link": _text(connector.referral_link),
        "microsoft_crm_id": _text(connector.microsoft_crm_id),
    }
    if record.ref.kind == "lead" and not lead_has_name:
        del view["name"]
    if record.currency is not None:  # single-currency orgs have no currency field: no opinion
        view["currency"] = record.currency.strip().upper() or None
    return view


def _split_name(full_name: str | None) -> tuple[str | None, str | None]:
    """ "Ada Lovelace" -> ("Ada", "Lovelace"); Partner Center wants the two parts separately."""
    if not full_name or not full_name.strip():
        return None, None
    first, _, last = full_name.strip().rpartition(" ")
    return (first or None), last


# ---- comparing across sides ----------------------------------------------------------------------------
def _emails_or_names(contacts: Any) -> list[str]:
    return sorted(
        (contact.get("email") or f"~{(contact.get('last_name') or '').casefold()}") for contact in contacts or []
    )


def _casefolded(customer: Any) -> Any:
    if not customer:
        return None
    return {key: (value.casefold() if isinstance(value, str) else value) for key, value in customer.items()}


def same_value(field: str, pc_value: Any, crm_value: Any) -> bool:
    """Do both sides already say the same thing about `field` (so nothing needs writing)?

    Lenient where the two systems legitimately store the same fact differently: contacts and
    solutions are compared by identity (email, solution id), customers case-insensitively.
    """
    if field in ("contacts", "team"):
        return _emails_or_names(pc_value) == _emails_or_names(crm_value)
    if field == "solutions":
        return sorted(str(item["id"]) for item in pc_value or []) == sorted(str(item["id"]) for item in crm_value or [])
    if field == "customer":
        return bool(_casefolded(pc_value) == _casefolded(crm_value))
    if field == "visible":
        return bool(pc_value) == bool(crm_value)
    return bool(pc_value == crm_value)
