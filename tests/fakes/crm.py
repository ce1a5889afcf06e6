"""A CRM in memory (`CrmPort`): opportunities and leads as `CrmRecord`s."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from shared.crm.port import (
    ChangedRecord,
    ChangedRecords,
    CrmAccount,
    CrmCapabilities,
    CrmContact,
    CrmNotFoundError,
    CrmObjectKind,
    CrmRecord,
    CrmRef,
    CrmSolution,
    CrmValidationError,
    RecordUpdate,
    StageFacts,
    SyncStatus,
    UpsertResult,
)

_CONNECTOR = (
    "sync_enabled",
    "referral_id",
    "referral_link",
    "engagement_id",
    "help_needed",
    "visible_to_microsoft",
    "referral_response",
    "decline_reason",
    "referral_status",
    "microsoft_crm_id",
    "solution_area",
    "solution_play",
    "partner_role",
    "marketplace_intent",
)
_PLAIN = ("name", "deal_value", "currency", "close_date", "notes", "owner_id")
OPEN_STAGE = "Develop"


class FakeCrm:
    """Only the explicitly set fields of a write are written; every write moves `modified_at`;
    `read` of an unknown record raises `CrmNotFoundError`; `refuse_next` makes the next write fail
    validation. A single-currency fake (`multi_currency=False`) has no currency on its records."""

    kind = "fake"

    def __init__(
        self,
        clock: Callable[[], dt.datetime],
        capabilities: CrmCapabilities | None = None,
        *,
        multi_currency: bool = True,
    ) -> None:
        self.clock = clock
        self.poll_overlap = dt.timedelta(minutes=5)
        self.capabilities = capabilities or CrmCapabilities()
        self.multi_currency = multi_currency
        self.records: dict[tuple[str, str], CrmRecord] = {}
        self.accounts: dict[str, CrmAccount] = {}
        self.contacts: dict[str, CrmContact] = {}
        self.writes: list[tuple[str, CrmRef, dict[str, Any]]] = []
        self._ids = itertools.count(1)
        self._failure: Exception | None = None
        self.after_write: Callable[[CrmRef], None] | None = None
        """Runs once after the next integration write (upsert or field update): lets a seller's edit
        land between the engine's first read and its re-read."""

    # ---- test controls ----------------------------------------------------------------------------
    def seller_creates(self, kind: CrmObjectKind, values: RecordUpdate, **record: Any) -> CrmRef:
        ref = CrmRef(kind=kind, id=f"{kind[:3]}-{next(self._ids)}")
        blank = CrmRecord(ref=ref, name="", stage=StageFacts(stage_name=OPEN_STAGE), **record)
        self.records[(kind, ref.id)] = self._applied(blank, values, by_integration=False)
        return ref

    def seller_edits(self, ref: CrmRef, values: RecordUpdate | None = None, **record: Any) -> CrmRecord:
        current = self.read(ref)
        if record:
            current = current.model_copy(update=record)
        self.records[(ref.kind, ref.id)] = self._applied(current, values or RecordUpdate(), by_integration=False)
        return self.records[(ref.kind, ref.id)]

    def refuse_next(self, message: str) -> None:
        """The next write fails validation (a validation rule, a required field)."""
        self.fail_next(CrmValidationError(message, fields=["name"]))

    def fail_next(self, error: Exception) -> None:
        """The next write raises `error`."""
        self._failure = error

    def by_referral(self, referral_id: str) -> list[CrmRecord]:
        return [item for item in self.records.values() if item.connector.referral_id == referral_id]

    # ---- the port ----------------------------------------------------------------------------------
    def changed_since(self, since: dt.datetime | None, *, position: str | None = None) -> ChangedRecords:
        changes = [
            ChangedRecord(ref=item.ref, stamp=item.modified_at or self.clock())
            for item in self.records.values()
            if item.connector.sync_enabled
        ]
        found = [change for change in changes if since is None or change.stamp >= since]
        return ChangedRecords(changes=sorted(found, key=lambda change: (change.stamp, change.ref.kind, change.ref.id)))

    def read(self, ref: CrmRef) -> CrmRecord:
        found = self.records.get((ref.kind, ref.id))
        if found is None:
            raise CrmNotFoundError(f"{ref.kind} {ref.id} not found")
        return found

    def upsert_by_referral_id(self, kind: CrmObjectKind, referral_id: str, values: RecordUpdate) -> UpsertResult:
        self._refuse_if_asked()
        existing = [item for item in self.by_referral(referral_id) if item.ref.kind == kind]
        if len(existing) > 1:
            raise CrmValidationError("more than one record has this referral id", code="MULTIPLE_CHOICES")
        if existing:
            self.update_fields(existing[0].ref, values)
            return UpsertResult(ref=existing[0].ref, created=False)
        ref = CrmRef(kind=kind, id=f"{kind[:3]}-{next(self._ids)}")
        stage = StageFacts(stage_name=self.capabilities.pending_stage or OPEN_STAGE)
        blank = CrmRecord(ref=ref, name="", stage=stage)
        keyed = values.model_copy(update={"referral_id": referral_id})
        keyed.model_fields_set.add("referral_id")
        self.records[(kind, ref.id)] = self._applied(blank, keyed, by_integration=True)
        self.writes.append(("upsert", ref, values.written()))
        self._after_write(ref)
        return UpsertResult(ref=ref, created=True)

    def find_or_create_account(self, account: CrmAccount) -> str:
        for account_id, item in self.accounts.items():
            same_name = item.name.casefold() == account.name.casefold()
            if same_name and (item.postal_code or "").casefold() == (account.postal_code or "").casefold():
                return account_id
        account_id = f"acc-{next(self._ids)}"
        self.accounts[account_id] = account.model_copy(update={"id": account_id})
        return account_id

    def find_or_create_contact(self, contact: CrmContact, account_id: str | None) -> str:
        for contact_id, item in self.contacts.items():
            if contact.email and item.email and item.email.casefold() == contact.email.casefold():
                return contact_id
        contact_id = f"con-{next(self._ids)}"
        self.contacts[contact_id] = contact.model_copy(update={"id": contact_id})
        return contact_id

    def set_contacts(self, ref: CrmRef, contact_ids: Sequence[str]) -> None:
        people = [self.contacts[item] for item in contact_ids]
        self._replace(ref, "set_contacts", {"contacts": people}, contacts=people)

    def set_solutions(self, ref: CrmRef, solutions: Sequence[CrmSolution]) -> None:
        rows = list(solutions)
        self._replace(ref, "set_solutions", {"solutions": [item.solution_id for item in rows]}, solutions=rows)

    def update_fields(self, ref: CrmRef, values: RecordUpdate) -> None:
        if not values.model_fields_set:
            return
        self._refuse_if_asked()
        self.records[(ref.kind, ref.id)] = self._applied(self.read(ref), values, by_integration=True)
        self.writes.append(("update_fields", ref, values.written()))
        self._after_write(ref)

    def set_sync_result(
        self, ref: CrmRef, status: SyncStatus, at: dt.datetime, *, audit_line: str | None = None
    ) -> None:
        record = self.read(ref)
        audit = record.connector.audit
        if audit_line:
            audit = f"{at.isoformat()} {audit_line}\n{audit}" if audit else f"{at.isoformat()} {audit_line}"
        connector = record.connector.model_copy(update={"sync_status": status, "last_synced": at, "audit": audit})
        self._replace(ref, "set_sync_result", {"status": status, "audit_line": audit_line}, connector=connector)

    # ---- inside -------------------------------------------------------------------------------------
    def _after_write(self, ref: CrmRef) -> None:
        if self.after_write is not None:
            hook, self.after_write = self.after_write, None
            hook(ref)

    def _refuse_if_asked(self) -> None:
        if self._failure is not None:
            error, self._failure = self._failure, None
            raise error

    def _replace(self, ref: CrmRef, call: str, logged: dict[str, Any], **update: Any) -> None:
        record = self.read(ref)
        update.update(modified_at=self._tick(record), modified_by_integration=True)
        self.records[(ref.kind, ref.id)] = record.model_copy(update=update)
        self.writes.append((call, ref, logged))

    def _tick(self, record: CrmRecord) -> dt.datetime:
        """A modification stamp that always moves forward, as the CRM's own does."""
        now = self.clock()
        if record.modified_at is not None and now <= record.modified_at:
            return record.modified_at + dt.timedelta(milliseconds=1)
        return now

    def _applied(self, record: CrmRecord, values: RecordUpdate, *, by_integration: bool) -> CrmRecord:
        written = values.written()
        update: dict[str, Any] = {name: written[name] for name in _PLAIN if name in written}
        if not self.multi_currency:
            update.pop("currency", None)
        if "account_id" in written:
            update["account"] = self.accounts.get(written["account_id"]) if written["account_id"] else None
        connector = {name: written[name] for name in _CONNECTOR if name in written}
        if connector:
            update["connector"] = record.connector.model_copy(update=connector)
        if "lifecycle" in written:
            update["stage"] = self._stage(record.ref.kind, written["lifecycle"])
        update.update(self._lead_columns(record, written))
        update.update(modified_at=self._tick(record), modified_by_integration=by_integration)
        return record.model_copy(update=update)

    def _stage(self, kind: CrmObjectKind, lifecycle: str) -> StageFacts:
        if kind == "lead":
            if lifecycle == "won":
                raise CrmValidationError("converting a lead is a seller's decision", fields=["lifecycle"])
            return StageFacts(lead_status=lifecycle, is_disqualified=lifecycle == "lost")
        if lifecycle in ("won", "lost"):
            return StageFacts(stage_name=f"Closed {lifecycle}", is_closed=True, is_won=lifecycle == "won")
        pending = self.capabilities.pending_stage
        return StageFacts(stage_name=pending if lifecycle == "pending" and pending else OPEN_STAGE)

    @staticmethod
    def _lead_columns(record: CrmRecord, written: dict[str, Any]) -> dict[str, Any]:
        """A lead carries its company and first contact itself."""
        if record.ref.kind != "lead":
            return {}
        update: dict[str, Any] = {}
        if "lead_company" in written:
            update["account"] = CrmAccount(
                name=written["lead_company"] or "(no name)",
                street=written.get("lead_street"),
                city=written.get("lead_city"),
                state=written.get("lead_state"),
                postal_code=written.get("lead_postal_code"),
                country=written.get("lead_country"),
            )
        if "lead_last_name" in written:
            update["contacts"] = [
                CrmContact(
                    first_name=written.get("lead_first_name"),
                    last_name=written["lead_last_name"],
                    email=written.get("lead_email"),
                    phone=written.get("lead_phone"),
                )
            ]
        return update
