"""The connector's business rules, as pure functions (SPEC 1.2, 1.3; reference 1.4, 1.5).

- which CRM object a referral becomes, and whether SYNC_COSELL_ONLY skips it;
- what Partner Center needs before a referral may be created or updated (checked before any call,
  with messages a seller can act on);
- how a status change on one side becomes a status change on the other.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from shared.crm.port import CrmObjectKind, Lifecycle
from shared.mapping.countries import CountryError, country_code
from shared.mapping.views import View
from shared.model.referral import ASSISTANCE_REQUEST_CODES, Referral


def crm_object_for(referral: Referral) -> CrmObjectKind:
    """Lead-sharing referrals become leads; co-sell and pipeline referrals opportunities (reference 1.5)."""
    return "lead" if referral.kind() in ("marketplace_lead", "qualified_lead") else "opportunity"


def asks_microsoft_for_help(view: View) -> bool:
    """A co-sell referral: the partner asked Microsoft for help ("Unknown" is not a request)."""
    return view.get("help_needed") not in (None, "", "Unknown")


def partner_center_problems(view: View, *, accept_country_names: bool) -> list[str]:
    """What stops Partner Center from accepting this deal, in words a seller can act on.

    `view` is the CRM's neutral view (shared/mapping/views.py) of what would be sent. Every referral
    needs a name and a customer with a two-letter country; a co-sell (help requested) also needs a
    valid help value, a customer contact with an email, at least one solution, a deal value above
    0 with a currency, and a close date (SPEC 1.3).
    """
    problems: list[str] = []
    if not view.get("name"):
        problems.append("the opportunity needs a name")
    customer = view.get("customer") or {}
    if not customer.get("name"):
        problems.append("choose the customer account")
    else:
        try:
            country_code(customer.get("country"), accept_names=accept_country_names)
        except CountryError as error:
            problems.append(str(error))
    if not asks_microsoft_for_help(view):
        return problems
    help_value = view.get("help_needed")
    if help_value not in ASSISTANCE_REQUEST_CODES:
        problems.append(
            f"'{help_value}' is not a valid 'How can Microsoft help?' value "
            f"(choose one of {', '.join(ASSISTANCE_REQUEST_CODES[1:])})"
        )
    if not any(contact.get("email") for contact in view.get("contacts") or []):
        problems.append("add a customer contact with an email address (Microsoft needs one when you ask for help)")
    if not view.get("solutions"):
        problems.append("add at least one Microsoft Partner Center solution")
    problems.extend(_deal_value_problems(view.get("deal_value")))
    if "currency" in view and not view.get("currency"):
        problems.append("choose the deal currency")
    if not view.get("close_date"):
        problems.append("set the close date")
    return problems


def _deal_value_problems(value: Any) -> list[str]:
    if value in (None, ""):
        return ["enter a deal value greater than 0"]
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return [f"the deal value '{value}' is not a number"]
    return [] if amount > 0 else ["deal value must be greater than 0"]


# ---- status ------------------------------------------------------------------------------------------
class StatusChange(BaseModel):
    """A Partner Center status change (reference 1.4 transitions)."""

    model_config = ConfigDict(frozen=True)

    status: Literal["Active", "Closed"]
    substatus: Literal["Accepted", "Won", "Lost", "Declined"]
    reason: str | None = None

    @property
    def label(self) -> str:
        return f"{self.status} / {self.substatus}"


ACCEPT = StatusChange(status="Active", substatus="Accepted")


def partner_center_status_change(pc: View, crm: View, base_crm: View) -> tuple[StatusChange | None, str | None]:
    """What the CRM's stage / response asks of an open Partner Center referral, and why (for the audit).

    Returns (change, note); `note` explains a request that cannot be honoured. Decisions are made
    from the current state of both sides, so a lost or repeated message changes nothing.
    """
    pc_state = pc.get("lifecycle")
    crm_state = crm.get("lifecycle")
    response = crm.get("response")
    reason = crm.get("decline_reason")
    if pc_state == "pending":
        if response == "Decline":
            return StatusChange(status="Closed", substatus="Declined", reason=reason or "Declined in the CRM"), None
        if crm_state in ("lost", "disqualified"):
            default = "Disqualified in the CRM" if crm_state == "disqualified" else "Closed as lost in the CRM"
            return StatusChange(status="Closed", substatus="Declined", reason=reason or default), None
        if crm_state == "won":
            return StatusChange(status="Closed", substatus="Won"), None
        if response == "Accept" or crm_state == "qualified":
            return ACCEPT, None
        if crm_state == "open" and base_crm.get("lifecycle") == "pending":
            return ACCEPT, None  # Salesforce: the seller moved the opportunity out of the pending stage
        return None, None
    if pc_state == "active":
        if crm_state == "won":
            return StatusChange(status="Closed", substatus="Won"), None
        if crm_state == "lost":
            return StatusChange(status="Closed", substatus="Lost", reason=reason), None
        if crm_state == "disqualified":
            return StatusChange(status="Closed", substatus="Declined", reason=reason or "Disqualified in the CRM"), None
        if response == "Decline" and base_crm.get("response") != "Decline":
            return (
                None,
                "the referral is already accepted, so it cannot be declined; close the opportunity as lost instead",
            )
    return None, None


def crm_lifecycle_for(pc: View, crm: View, *, crm_object: CrmObjectKind, has_pending_stage: bool) -> Lifecycle | None:
    """The CRM stage / state Partner Center's status asks for, or None when the CRM already agrees.

    A lead is never qualified by the connector (converting it is a seller's decision in the CRM).
    """
    pc_state = pc.get("lifecycle")
    crm_state = crm.get("lifecycle")
    if pc_state == "won":
        return None if crm_state in ("won", "qualified") or crm_object == "lead" else "won"
    if pc_state in ("lost", "declined", "expired"):
        return None if crm_state in ("lost", "disqualified") else "lost"
    if pc_state == "active" and crm_state == "pending" and has_pending_stage:
        return "active"
    return None
