"""The Partner Center referral on the wire (reference/partner-center-api.md 1.3 and 1.4).

camelCase on the wire, snake_case in Python. Unknown members are kept (`extra="allow"`), so a
read-modify-write never drops a field Microsoft added. Enums are plain strings: a value we do not
know yet is accepted and logged once (the reference lists the enum sets as not fully confirmed).
The `eTag` is kept verbatim, quotes included, because `If-Match` must echo it exactly.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator
from pydantic.alias_generators import to_camel

from shared.partner_center.contract import contract

logger = logging.getLogger(__name__)

_unknown_seen: set[tuple[str, str]] = set()
_unknown_lock = threading.Lock()


def _tolerant(name: str, known: tuple[str, ...]) -> AfterValidator:
    """Validator of a string enum that accepts values outside `known`, logging each new one once."""
    known_set = frozenset(known)

    def check(value: str) -> str:
        if value not in known_set:
            with _unknown_lock:
                first = (name, value) not in _unknown_seen
                _unknown_seen.add((name, value))
            if first:
                logger.warning("Partner Center sent %s=%r, which is not a value we know; keeping it as is", name, value)
        return value

    return AfterValidator(check)


def parse_pc_datetime(value: Any) -> Any:
    """Partner Center sends up to 7 fractional digits and a `Z`; Python keeps 6."""
    if isinstance(value, str):
        text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip().replace("Z", "+00:00"))
        moment = dt.datetime.fromisoformat(text)
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return value


def format_pc_datetime(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


UtcDateTime = Annotated[
    dt.datetime,
    BeforeValidator(parse_pc_datetime),
    PlainSerializer(format_pc_datetime, return_type=str, when_used="json"),
]

_CONTRACT = contract()


def _enum(name: str) -> AfterValidator:
    return _tolerant(name, _CONTRACT.enum(name))


Status = Annotated[str, _enum("status")]
Substatus = Annotated[str, _enum("substatus")]
ReferralType = Annotated[str, _enum("type")]
Qualification = Annotated[str, _enum("qualification")]
Direction = Annotated[str, _enum("direction")]
TargetType = Annotated[str, _enum("target.type")]
SolutionType = Annotated[str, _enum("solution.type")]
ProfileType = Annotated[str, _enum("customerProfile.ids.profileType")]
ASSISTANCE_REQUEST_CODES = _CONTRACT.enum("inviteContext.assistanceRequestCode")
"""`inviteContext.assistanceRequestCode` values (the contract): the "How can Microsoft help?" picklist."""
AssistanceRequestCode = Annotated[str, _enum("inviteContext.assistanceRequestCode")]

CLOSED_SUBSTATUSES = _CONTRACT.substatuses("Closed")

MICROSOFT_ORGANIZATION_ID = "msft"
"""Microsoft's organisation id: `inviteContext.invitedBy.organizationId` when Microsoft invited (the
only documented use), and the `organizationId` of Microsoft's related referral in practice."""


def _tag_texts(value: Any) -> Any:
    """The definition lists tags as `[{"tag": ...}]`; real payloads show plain strings: read both."""
    if isinstance(value, list):
        return [item.get("tag") if isinstance(item, dict) else item for item in value if item is not None]
    return value


class WireModel(BaseModel):
    """camelCase aliases, Python names accepted too, unknown members kept."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    def to_wire(self) -> dict[str, Any]:
        """The JSON body Partner Center expects (aliases, no unset `None`s)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Address(WireModel):
    address_line1: str | None = None
    address_line2: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None
    region: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _state_from_region(cls, data: Any) -> Any:
        """Real payloads put a US state in `region` and leave `state` null; the definition has both.
        Read either into `state`; `region` stays as sent."""
        if isinstance(data, dict) and not data.get("state") and data.get("region"):
            return {**data, "state": data["region"]}
        return data


class ContactPreference(WireModel):
    locale: str | None = None
    disable_notifications: bool | None = None


class Member(WireModel):
    first_name: str | None = None
    last_name: str | None = None
    phone_number: str | None = None
    email: str | None = None
    title: str | None = None
    contact_preference: ContactPreference | None = None


class CustomerProfileId(WireModel):
    profile_type: ProfileType | None = None
    id: str | None = None


class CustomerProfile(WireModel):
    name: str | None = None
    size: str | None = None
    is_matching_complete: bool | None = None
    address: Address | None = None
    team: list[Member] = Field(default_factory=list)
    ids: list[CustomerProfileId] = Field(default_factory=list)


class Consent(WireModel):
    consent_to_contact: bool | None = None
    consent_to_to_share_info_with_others: bool | None = None  # sic: "ToTo" is the wire name
    consent_to_microsoft_to_contact_specific_partners: bool | None = None  # Learn's create sample; not in [C]
    consent_to_share_referral_with_microsoft_sellers: bool | None = None


class IdTag(WireModel):
    id: str | None = None


class Solution(WireModel):
    id: str | None = None
    name: str | None = None
    type: SolutionType | None = None
    price: float | None = None
    quantity: int | None = None
    currency: str | None = None
    publisher_name: str | None = None
    solution_type: str | None = None
    closing_date_time: UtcDateTime | None = None


class Requirements(WireModel):
    industries: list[IdTag] = Field(default_factory=list)
    products: list[IdTag] = Field(default_factory=list)
    services: list[IdTag] = Field(default_factory=list)
    solutions: list[Solution] = Field(default_factory=list)
    offers: list[Any] = Field(default_factory=list)
    sales_plays: list[Any] = Field(default_factory=list)
    additional_requirements: dict[str, Any] | None = None


class Details(WireModel):
    notes: str | None = None
    deal_value: float | None = None
    currency: str | None = None
    closing_date_time: UtcDateTime | None = None
    customer_action: str | None = None
    customer_requested_contact: bool | None = None
    incentive_level: str | None = None
    requirements: Requirements | None = None


class InvitedBy(WireModel):
    organization_id: str | None = None
    organization_name: str | None = None


class InviteContext(WireModel):
    notes: str | None = None
    assistance_request_code: AssistanceRequestCode | None = None
    invited_mpn_id: str | None = None
    invited_by: InvitedBy | None = None


class TrackingInfo(WireModel):
    microsoft_msx_id: str | None = None
    microsoft_us_fed_opportunity_id: str | None = Field(default=None, alias="microsoftUSFedOpportunityId")
    microsoft_us_fed_lead_id: str | None = Field(default=None, alias="microsoftUSFedLeadId")
    migrated_psc_deal_id: str | None = Field(default=None, alias="migratedPSCDealId")
    migrated_psc_partner_deal_id: str | None = Field(default=None, alias="migratedPSCPartnerDealId")


class Link(WireModel):
    uri: str | None = None
    method: str | None = None


class Links(WireModel):
    related_referrals: Link | None = None
    self_: Link | None = Field(default=None, alias="self")


class Target(WireModel):
    type: TargetType | None = None
    id: str | None = None


ReferralKind = Literal["marketplace_lead", "qualified_lead", "co_sell"]


class Referral(WireModel):
    odata_context: str | None = Field(default=None, alias="@odata.context")
    id: str | None = None
    engagement_id: str | None = None
    name: str | None = None
    organization_id: str | None = None
    organization_name: str | None = None
    external_reference_id: str | None = None
    created_date_time: UtcDateTime | None = None
    updated_date_time: UtcDateTime | None = None
    expiration_date_time: UtcDateTime | None = None
    accepted_date_time: UtcDateTime | None = None
    closed_date_time: UtcDateTime | None = None
    status: Status | None = None
    substatus: Substatus | None = None
    status_reason: str | None = None
    type: ReferralType | None = None
    qualification: Qualification | None = None
    direction: Direction | None = None
    e_tag: str | None = Field(default=None, alias="eTag")
    sales_stage: str | None = None  # swagger enum vs observed "100": kept as text (reference open question 2)
    referral_program: str | None = None
    registration_status: str | None = None
    tags: Annotated[list[str], BeforeValidator(_tag_texts)] = Field(default_factory=list)
    target: list[Target] = Field(default_factory=list)
    team: list[Member] = Field(default_factory=list)
    customer_profile: CustomerProfile | None = None
    consent: Consent | None = None
    details: Details | None = None
    invite_context: InviteContext | None = None
    tracking_info: TrackingInfo | None = None
    links: Links | None = None
    registrations: list[dict[str, Any]] = Field(default_factory=list)
    # Required on services co-sell referrals (FY26 taxonomy, shared/partner_center/taxonomy); see contract.json.
    partner_role: str | None = None
    solution_area: str | None = None
    solution_play: str | None = None

    @property
    def is_closed(self) -> bool:
        """Closed referrals are terminal in Partner Center: no later update is accepted."""
        return self.status == "Closed"

    @property
    def is_microsoft_side(self) -> bool:
        """Microsoft's own referral in an engagement. No source documents how to recognise it: we
        accept `organizationId == "msft"` (what related referrals carry in practice) and the legacy
        shared-referral form, a target `BusinessProfileLocation` with id `msft` (2019 create docs)."""
        if self.organization_id == MICROSOFT_ORGANIZATION_ID:
            return True
        return any(
            target.type == "BusinessProfileLocation" and target.id == MICROSOFT_ORGANIZATION_ID
            for target in self.target
        )

    @property
    def invited_by_microsoft(self) -> bool:
        invited_by = self.invite_context.invited_by if self.invite_context else None
        return bool(invited_by and invited_by.organization_id == MICROSOFT_ORGANIZATION_ID)

    def kind(self) -> ReferralKind:
        """Classification of reference 1.5: leads (from Microsoft) vs co-sell opportunities."""
        if self.type == "Independent" and self.qualification == "Direct":
            invited_by = self.invite_context.invited_by if self.invite_context else None
            if invited_by is None or invited_by.organization_id in (None, MICROSOFT_ORGANIZATION_ID):
                return "marketplace_lead"
        if (
            self.type == "Independent"
            and self.qualification in ("SalesQualified", "MarketingQualified")
            and self.invited_by_microsoft
        ):
            return "qualified_lead"
        return "co_sell"


class ReferralPage(WireModel):
    """One page of `GET /referrals`."""

    odata_context: str | None = Field(default=None, alias="@odata.context")
    odata_count: int | None = Field(default=None, alias="@odata.count")
    value: list[Referral] = Field(default_factory=list)
    odata_next_link: str | None = Field(default=None, alias="@odata.nextLink")


PatchOp = Literal["add", "replace"]


class PatchOperation(BaseModel):
    """One JSON Patch operation; Partner Center accepts only `add` and `replace`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: PatchOp
    path: str = Field(pattern=r"^/.+")
    value: Any
