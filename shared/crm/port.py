"""The CRM-neutral port: what the sync engine asks of a CRM, and the records it gets back.

The engine sees only `CrmPort` and the records below; `shared/crm/salesforce.py` and
`shared/crm/dynamics.py` implement it. Records use plain, CRM-neutral names (an opportunity's
"deal value", not `Amount` or `estimatedvalue`); each adapter maps its own field names, honouring
the CRM_DEAL_VALUE_FIELD / CRM_DEAL_CURRENCY_FIELD / CRM_ACCOUNT_COUNTRY_FIELD settings.

Conventions every adapter follows:
- Record names in `CrmRecord.name` never carry the sync mark (" ✔" / " ✖"); adapters strip it
  when reading and keep it when writing a new name (`set_sync_result` owns the mark).
- Times are timezone-aware UTC `datetime`s. Poll positions come from the CRM's own data
  (Salesforce `SystemModstamp`, Dataverse `modifiedon` or a delta link), never from our clock, so
  clock skew between us and the CRM cannot lose a change.
- Transient failures (throttling, 5xx, timeouts, lock contention) raise `CrmTransientError`, so
  the queue retries; invalid data raises `CrmValidationError` naming the field; a missing record
  raises `CrmNotFoundError`. Adapters never swallow an error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

CrmObjectKind = Literal["opportunity", "lead"]
"""Referrals become opportunities (co-sell, pipeline) or leads (lead sharing)."""

SyncStatus = Literal["Synced", "Error", "Pending"]
"""Values of the connector's sync status field (SPEC 1.4)."""

ReferralResponse = Literal["Accept", "Decline"]

Lifecycle = Literal["pending", "active", "won", "lost"]
"""Where a record stands, CRM-neutral. Adapters map it to their stages / statuses:
Salesforce opportunity `pending`/`active`/`won`/`lost` -> SALESFORCE_PENDING/ACTIVE/WON/LOST_STAGE;
a lead `won` means converted (qualified), `lost` means disqualified; Dataverse uses statecode and
the WinOpportunity / LoseOpportunity / QualifyLead actions."""

SYNC_MARK_OK = " ✔"
SYNC_MARK_FAILED = " ✖"
SYNC_MARKS = (SYNC_MARK_OK, SYNC_MARK_FAILED)


def strip_sync_mark(name: str) -> str:
    """The record name without any trailing sync marks (several, if someone typed one by hand)."""
    stripped = name
    while stripped.endswith(SYNC_MARKS):
        stripped = stripped[: -len(SYNC_MARK_OK)]
    return stripped.rstrip()


def with_sync_mark(name: str, mark: str | None) -> str:
    """`name` with exactly one mark (or none): never duplicated, whatever the name held before."""
    base = strip_sync_mark(name)
    return base + mark if mark else base


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CrmRef(_Record):
    """Identifies one CRM record: its kind and the CRM's own id (Salesforce 18-char id, Dataverse GUID)."""

    kind: CrmObjectKind
    id: str = Field(min_length=1)


class ChangedRecord(_Record):
    """One change a CRM poll found: the record (a child row's change counts as its parent's) and
    the CRM's own modification stamp of the row that changed."""

    ref: CrmRef
    stamp: dt.datetime


class ChangedRecords(_Record):
    """Result of `CrmPort.changed_since`: every change found, ordered by (stamp, kind, id).

    A record may appear more than once (its own row and a child row, with different stamps).
    `position` is set only by a CRM read through a change feed (Dataverse delta links): pass it
    back to continue after these changes. Timestamp polling leaves it None.
    """

    changes: list[ChangedRecord]
    position: str | None = None


class CrmAccount(_Record):
    """The customer account. `id` is None for an account not yet in the CRM."""

    id: str | None = None
    name: str = Field(min_length=1)
    street: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = Field(
        default=None, description="As stored in CRM_ACCOUNT_COUNTRY_FIELD (ideally ISO 3166 alpha-2)."
    )


class CrmContact(_Record):
    """A customer contact. Matched by `email` (case-insensitive)."""

    id: str | None = None
    first_name: str | None = None
    last_name: str = Field(min_length=1)
    email: str | None = None
    phone: str | None = None
    title: str | None = None


class CrmSolution(_Record):
    """One Microsoft Partner Center solution on a deal (Salesforce `PCS_Solution__c`, Dataverse `pcs_partnercentersolution`)."""

    id: str | None = Field(default=None, description="The CRM row id; None for a solution not yet written.")
    solution_id: str = Field(min_length=1, description="Partner Center solution id, e.g. 'SOL-123'.")
    name: str | None = None
    publisher: str | None = None
    solution_type: str | None = None


class StageFacts(_Record):
    """Stage / status facts as the CRM decides them (never inferred from names by the engine)."""

    stage_name: str | None = Field(
        default=None, description="Opportunity stage (Salesforce StageName, Dataverse stepname)."
    )
    is_closed: bool = False
    is_won: bool = False
    lead_status: str | None = Field(default=None, description="Lead status label (leads only).")
    is_qualified: bool = Field(default=False, description="Lead converted / qualified.")
    is_disqualified: bool = False
    converted_opportunity_id: str | None = Field(
        default=None, description="The opportunity a qualified lead became; the referral link moves to it."
    )


class ConnectorFields(_Record):
    """The connector's own fields (SPEC 1.4), as stored on the record."""

    sync_enabled: bool = False
    referral_id: str | None = None
    referral_link: str | None = None
    engagement_id: str | None = None
    help_needed: str | None = Field(default=None, description="An assistanceRequestCode value, or None (not co-sell).")
    visible_to_microsoft: bool = False
    referral_response: ReferralResponse | None = None
    decline_reason: str | None = None
    referral_status: str | None = Field(
        default=None, description='Mirror of PC status/substatus, e.g. "Active / Accepted".'
    )
    microsoft_crm_id: str | None = None
    # FY26 co-sell fields (values: shared/partner_center/taxonomy) and the customer's marketplace intent
    solution_area: str | None = None
    solution_play: str | None = None
    partner_role: str | None = None
    marketplace_intent: str | None = None
    sync_status: SyncStatus | None = None
    last_synced: dt.datetime | None = None
    audit: str = ""


class CrmRecord(_Record):
    """Everything the engine needs about one opportunity or lead, read in as few calls as the CRM allows."""

    ref: CrmRef
    name: str = Field(description="Without the sync mark.")
    account: CrmAccount | None = None
    contacts: list[CrmContact] = Field(default_factory=list)
    solutions: list[CrmSolution] = Field(default_factory=list)
    stage: StageFacts = Field(default_factory=StageFacts)
    connector: ConnectorFields = Field(default_factory=ConnectorFields)
    deal_value: Decimal | None = None
    currency: str | None = Field(default=None, description="ISO 4217; None where the org has a single currency.")
    close_date: dt.date | None = None
    notes: str | None = None
    owner_id: str | None = None
    owner_name: str | None = None
    owner_email: str | None = None
    modified_at: dt.datetime | None = Field(
        default=None, description="The CRM's modification stamp (SystemModstamp / modifiedon)."
    )
    modified_by_id: str | None = None
    modified_by_integration: bool = Field(
        default=False, description="True when the last change was made by our integration user (echo detection)."
    )


class RecordUpdate(_Record):
    """Values to write. Only the fields explicitly set are written (`model_fields_set`); None clears a field.

    Used for both `upsert_by_referral_id` and `update_fields`, so a write names exactly what changes
    and never overwrites a seller's edit to a field we did not mean to touch.
    """

    name: str | None = None
    account_id: str | None = None
    deal_value: Decimal | None = None
    currency: str | None = None
    close_date: dt.date | None = None
    notes: str | None = None
    lifecycle: Lifecycle | None = None
    owner_id: str | None = None
    # lead-only contact/company values (a lead carries them itself instead of related records)
    lead_company: str | None = None
    lead_first_name: str | None = None
    lead_last_name: str | None = None
    lead_email: str | None = None
    lead_phone: str | None = None
    lead_street: str | None = None
    lead_city: str | None = None
    lead_state: str | None = None
    lead_postal_code: str | None = None
    lead_country: str | None = None
    # connector fields
    sync_enabled: bool | None = None
    referral_id: str | None = None
    referral_link: str | None = None
    engagement_id: str | None = None
    help_needed: str | None = None
    visible_to_microsoft: bool | None = None
    referral_response: ReferralResponse | None = None
    decline_reason: str | None = None
    referral_status: str | None = None
    microsoft_crm_id: str | None = None
    solution_area: str | None = None
    solution_play: str | None = None
    partner_role: str | None = None
    marketplace_intent: str | None = None

    def written(self) -> dict[str, Any]:
        """The explicitly set values, by neutral name."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class CrmCapabilities(_Record):
    """What a CRM can do, as the engine needs to know it; each adapter states its own."""

    pending_stage: str | None = Field(
        default=None,
        description="The opportunity stage an unaccepted referral waits in; None where the CRM has none "
        "(acceptance is then only the referral response field).",
    )
    lead_has_name: bool = Field(
        default=True, description="False where a lead has no deal name (its company is the customer)."
    )
    converts_leads: bool = Field(
        default=True, description="A qualified lead becomes an opportunity, which the referral then follows."
    )


class UpsertResult(_Record):
    ref: CrmRef
    created: bool


class CrmError(Exception):
    """Base of every error a CRM adapter raises."""


class CrmTransientError(CrmError):
    """Worth retrying later: throttling, 5xx, timeouts, row locks, an expired session we could not renew yet."""

    def __init__(self, message: str, *, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class CrmValidationError(CrmError):
    """The CRM refused the data; retrying the same write cannot help. `fields` names the culprits."""

    def __init__(self, message: str, *, code: str | None = None, fields: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.fields = list(fields)


class CrmNotFoundError(CrmError):
    """The record does not exist (or was deleted)."""


class CrmSetupError(CrmError):
    """The CRM is not set up for the connector (a field or object not deployed, a permission the
    integration user lacks): no retry and no seller can fix it, an admin must act."""


class CrmAuthError(CrmError):
    """Sign-in to the CRM failed (bad credentials, connected app not approved): an admin must act."""


@runtime_checkable
class CrmPort(Protocol):
    """What the sync engine needs from a CRM. Every method may raise the `CrmError`s above."""

    kind: str
    """The adapter's name (CRM_KIND), for logs and the poll watermark's name; the engine never branches on it."""

    capabilities: CrmCapabilities
    """Single currency is per record: `CrmRecord.currency` is None where the org has one currency."""

    poll_overlap: dt.timedelta
    """How far before the newest stamp already processed the poller re-reads, for transactions that
    commit late with an earlier stamp (shared/sync/polling.py keeps what it reported in there)."""

    def changed_since(self, since: dt.datetime | None, *, position: str | None = None) -> ChangedRecords:
        """Opportunities and leads with Sync = Yes whose row, or a child row (solutions, contact
        roles / connections), has a modification stamp at or after `since`, oldest first.

        `since` is a whole second (both CRMs' query literals have whole-second precision), so
        every change returned has `stamp >= since`; None means "from the beginning". A CRM read
        through a change feed ignores `since` and continues from `position` instead.
        """
        ...

    def read(self, ref: CrmRef) -> CrmRecord:
        """One record with its account, contacts, solutions, stage facts and connector fields.

        Raises `CrmNotFoundError` when it does not exist. Name is returned without the sync mark.
        """
        ...

    def upsert_by_referral_id(self, kind: CrmObjectKind, referral_id: str, values: RecordUpdate) -> UpsertResult:
        """Create or update the record whose referral id is `referral_id` (idempotent on retry).

        Only `values.model_fields_set` is written; the referral id itself is the key (don't repeat
        it in `values`). A new record gets whatever the CRM needs to exist (e.g. a Salesforce
        opportunity without a stage gets the pending stage). More than one record with that
        referral id raises `CrmValidationError` (code "MULTIPLE_CHOICES").
        """
        ...

    def find_or_create_account(self, account: CrmAccount) -> str:
        """Id of the account with the same name and postal code (exact, case-insensitive), else a new one.

        Values are escaped in the query: "O'Brien & Co \\ Ltd" matches itself and nothing else.
        """
        ...

    def find_or_create_contact(self, contact: CrmContact, account_id: str | None) -> str:
        """Id of the contact with this email (case-insensitive), else a new one under `account_id`.

        A contact without email is always created (there is nothing safe to match on).
        """
        ...

    def set_contacts(self, ref: CrmRef, contact_ids: Sequence[str]) -> None:
        """Make the record's customer contacts exactly `contact_ids` (first = primary).

        Salesforce: OpportunityContactRole rows (leads: ignored except the first, whose details the
        lead carries); Dataverse: parent contact plus connections. Unchanged links are left alone.
        """
        ...

    def set_solutions(self, ref: CrmRef, solutions: Sequence[CrmSolution]) -> None:
        """Make the record's solutions exactly `solutions`, matched by `solution_id`.

        Missing ones are created, removed ones deleted, changed ones updated, in as few calls as the
        CRM allows (collections / batch), checking each item's result.
        """
        ...

    def update_fields(self, ref: CrmRef, values: RecordUpdate) -> None:
        """Write exactly the explicitly set fields of `values` (nothing when none is set)."""
        ...

    def set_sync_result(
        self, ref: CrmRef, status: SyncStatus, at: dt.datetime, *, audit_line: str | None = None
    ) -> None:
        """Record the outcome of a sync: status, last-synced time, and (when SHOW_SYNC_MARK_IN_NAME)
        the mark at the end of the name (" ✔" for Synced, " ✖" for Error, none for Pending),
        replacing any earlier mark. `audit_line`, when given (what changed, or the error in plain
        words), is prepended to the audit in the same write.
        """
        ...
