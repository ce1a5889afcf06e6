"""The sync engine: make one referral <-> CRM record link consistent, now.

The unit of work is a link, not an event: whatever message arrives (a webhook, a poll, a retry, a
duplicate, an old one), the engine reads BOTH sides fresh through its ports (shared/sync/ports.py,
shared/crm/port.py), asks the pure planner (shared/sync/plan.py) what to write to each side,
carries the plan out, and saves the new snapshot under the link row's ETag. So duplicate, late and out-of-order messages are harmless, and
our own writes coming back produce no diff (no ping-pong).

Creates are idempotent: the CRM side by upsert on the referral id; the Partner Center side by a
write-ahead `creating` link, leased before the POST, and a lookup by `externalReferenceId` before
any second POST. One sync of a link runs at a time: it holds a lease on the link row, and a message
for a busy link waits (`LinkBusyError`; the worker puts it back on the queue with a short delay).

Errors (shared/sync/errors.py): transient ones (throttling, 5xx, timeouts, ETag races that keep
losing) raise, so the queue retries with back-off; permanent ones (data Partner Center or the CRM
refuses) are written to the CRM record's audit and sync status and to the link, and are not
retried; those only an admin can fix (sign-in, permissions, schema) raise to the worker, which
dead-letters them at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shared.crm.port import (
    CrmNotFoundError,
    CrmObjectKind,
    CrmPort,
    CrmRecord,
    CrmRef,
    CrmValidationError,
    RecordUpdate,
)
from shared.mapping import rules
from shared.mapping.fields import BY_NAME, FIELDS, ReadContext, View, label, referral_link
from shared.mapping.status import creation_lifecycle, normalised
from shared.mapping.to_crm import crm_account, crm_contacts, crm_solutions, record_update
from shared.mapping.to_partner_center import new_referral, patch_operations
from shared.mapping.views import crm_view, referral_view
from shared.model.referral import Referral
from shared.partner_center.client import (
    PartnerCenterConflictError,
    PartnerCenterNotFoundError,
    PartnerCenterValidationError,
)
from shared.settings import Settings
from shared.sync.plan import (
    MIRRORS,
    CrmPlan,
    Facts,
    PartnerCenterPlan,
    as_written,
    fingerprint,
    mirror_columns,
    next_snapshot,
    plan_crm,
    plan_outcome,
    plan_partner_center,
    snapshot,
)
from shared.sync.ports import LinkStore, PartnerCenterPort
from shared.sync.queues import CrmChange, PartnerCenterChange
from shared.sync.state import (
    AlreadyExistsError,
    ConcurrencyConflictError,
    Link,
    LinkState,
    link_id_for_crm,
    link_id_for_referral,
)

log = logging.getLogger(__name__)

MAX_MERGE_ATTEMPTS = 3
"""A 412 from Partner Center or a lost race on the link row re-runs the merge this often, then the
message is retried later by the queue."""

CREATE_LOOKUP_MARGIN = dt.timedelta(minutes=10)
"""How far before a `creating` intent the retry looks for the referral it may have created."""

CREATE_SETTLE_MARGIN = dt.timedelta(seconds=10)
"""Beyond the Partner Center HTTP timeout, how long a create that timed out may still take to land.
Partner Center commits some creates seconds after answering late (chaos runs saw a 1 s margin miss
them, issue 19); nothing documents a bound, so this is a measured guess, and a referral landing
later still is caught as a stray (audit) and by reconcile, not merged."""

LINK_LEASE = dt.timedelta(minutes=2)
"""How long a sync may hold its link: far beyond a sync's few calls (each retried within 5 s,
shared/retry.py), and the longest a dead holder keeps others waiting."""

BUSY_RETRY_SECONDS = 5.0
"""How soon a message for a link another worker is syncing is worth running again."""


class SyncRetryError(Exception):
    """Worth retrying later (the queue does): both sides kept changing while we merged."""


class LinkBusyError(SyncRetryError):
    """Another worker holds the link's lease (or may still be creating its referral): this message
    is worth running again after `retry_after_seconds`, not lost and not run alongside."""

    def __init__(self, message: str, *, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SyncEngine:
    def __init__(
        self,
        *,
        settings: Settings,
        state: LinkStore,
        partner_center: PartnerCenterPort,
        crm: CrmPort,
        clock: Callable[[], dt.datetime] = _now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.state = state
        self.pc = partner_center
        self.crm = crm
        self.clock = clock
        self.sleep = sleep
        self.capabilities = crm.capabilities

    # ---- entry points -------------------------------------------------------------------------------
    def handle(self, request: PartnerCenterChange | CrmChange) -> None:
        if isinstance(request, PartnerCenterChange):
            self.sync_referral(request.referral_id)
        else:
            self.sync_crm_record(CrmRef(kind=request.object, id=request.record_id))

    def sync_referral(self, referral_id: str) -> None:
        """A referral changed in Partner Center (webhook or reconcile poll)."""
        try:
            referral = self.pc.get_referral(referral_id)
        except PartnerCenterNotFoundError:
            log.warning("referral %s no longer exists in Partner Center; nothing to sync", referral_id)
            return
        related = None
        if referral.is_microsoft_side:  # issue 12: the model knows both undocumented forms
            related, referral_or_none = referral, self._our_referral_of(referral)
            if referral_or_none is None:
                log.info("Microsoft's referral %s belongs to no referral of ours; ignored", referral_id)
                return
            referral = referral_or_none
        assert referral.id is not None
        link = self.state.find_link_by_referral(referral.id)
        if link is None and referral.external_reference_id:
            link = self._link_of_outgoing(referral.external_reference_id)
            if link is not None and link.state == "creating":
                log.info("referral %s is being created from CRM record %s", referral.id, link.crm_id)
                return
            if link is not None and link.referral_id not in (None, referral.id):
                self._record_stray(referral, link)
                return
        if link is None or link.crm_id is None:
            self._create_in_crm(referral, link)
            return
        if link.pc_etag == referral.e_tag and related is None:
            log.debug("referral %s unchanged since the last sync", referral.id)
            return
        self._sync_link(link, referral=referral, related=related)

    def sync_crm_record(self, ref: CrmRef) -> None:
        """A CRM record with Sync = Yes changed (CRM poll)."""
        try:
            record = self.crm.read(ref)
        except CrmNotFoundError:
            log.warning("%s %s no longer exists in the CRM; nothing to sync", ref.kind, ref.id)
            return
        link = self.state.find_link_by_crm(ref.kind, ref.id)
        referral_id = record.connector.referral_id
        if link is None and referral_id:
            link = self.state.find_link_by_referral(referral_id)
            if link is not None and (link.crm_object, link.crm_id) != (ref.kind, ref.id):
                log.info(
                    "%s %s carries referral %s, whose link now follows %s %s",
                    ref.kind,
                    ref.id,
                    referral_id,
                    link.crm_object,
                    link.crm_id,
                )
                return
            if link is None:
                self._adopt(record, referral_id)
                return
        if link is None:
            if not record.connector.sync_enabled:
                return
            if ref.kind == "lead":
                log.info("lead %s has Sync = Yes but no referral; leads are not created in Partner Center", ref.id)
                return
            self._create_in_pc(record, None)
            return
        if self._unchanged_since_last_sync(link, record):
            log.debug("%s %s unchanged since the last sync (our own write coming back)", ref.kind, ref.id)
            return
        if link.referral_id is None or link.state == "creating":
            self._create_in_pc(record, link)
            return
        self._sync_link(link, record=record)

    def _record_stray(self, referral: Referral, link: Link) -> None:
        """A referral that names a CRM record (`externalReferenceId`) already linked to another
        referral: a duplicate made by a create Partner Center committed unseen, or someone's copy.
        Merging it would write its values over the seller's record, so it is only said, in the
        link's audit (the status page shows it), for an admin to close in Partner Center."""
        message = (
            f"stray referral {referral.id} names {link.crm_object} {link.crm_id} as its external reference, "
            f"which is linked to referral {link.referral_id}; not synced (close the stray in Partner Center)"
        )
        log.warning("link %s: %s", link.link_id, message)
        self.state.append_audit(link.link_id, direction="pc->crm", outcome="stray", message=message)

    # ---- helpers: finding things ----------------------------------------------------------------------
    def _our_referral_of(self, microsoft: Referral) -> Referral | None:
        """Our referral in the engagement of Microsoft's (related-referral events carry Microsoft's id)."""
        if not microsoft.engagement_id:
            return None
        ours = [
            item
            for item in self.pc.related_referrals(microsoft)  # issue 12: follows its links.relatedReferrals
            if not item.is_microsoft_side
        ]
        linked = [item for item in ours if item.id and self.state.find_link_by_referral(item.id)]
        candidates = linked or ours
        return candidates[0] if candidates else None

    def _link_of_outgoing(self, crm_id: str) -> Link | None:
        kinds: tuple[CrmObjectKind, ...] = ("opportunity", "lead")
        for kind in kinds:
            link = self.state.find_link_by_crm(kind, crm_id)
            if link is not None:
                return link
        return None

    def _unchanged_since_last_sync(self, link: Link, record: CrmRecord) -> bool:
        """Nothing we sync changed in the CRM since our last look: our own write coming back, or a
        seller's edit to a field we do not map. Compares everything we map, children included
        (solutions and contact roles do not move the parent's modification stamp)."""
        seen = link.snapshot.get("crm_seen")
        return seen is not None and seen == fingerprint(self._crm_view(record))

    def _find_created_referral(self, crm_id: str, since: dt.datetime) -> Referral | None:
        """The referral an earlier attempt may have created for `crm_id` before failing.

        `externalReferenceId` is not among the documented `$filter` fields (reference 1.2), so the
        lookup lists what changed since the intent (a documented filter) and matches locally."""
        for referral in self.pc.referrals_updated_since(since - CREATE_LOOKUP_MARGIN):
            if referral.external_reference_id == crm_id and not referral.is_microsoft_side:
                return referral
        return None

    def _context(self, related: Referral | None = None) -> ReadContext:
        return ReadContext(
            accept_country_names=self.settings.accept_country_names,
            pending_stage=self.capabilities.pending_stage,
            lead_has_name=self.capabilities.lead_has_name,
            related=related,
        )

    def _crm_view(self, record: CrmRecord) -> View:
        return crm_view(record, self._context())

    def _link_url(self, referral: Referral) -> str:
        return referral_link(referral, self.settings.pc_referral_link_template)

    def _write_related(self, ref: CrmRef, changes: View, account_id: str | None) -> None:
        """Write the fields kept in related rows (the registry says which): contact roles /
        connections of an opportunity (a lead carries its contact itself), and solutions."""
        for name, value in changes.items():
            how = BY_NAME[name].crm_write
            if how == "contacts" and ref.kind == "opportunity":
                ids = [self.crm.find_or_create_contact(contact, account_id) for contact in crm_contacts(value)]
                self.crm.set_contacts(ref, ids)
            elif how == "solutions":
                self.crm.set_solutions(ref, crm_solutions(value))

    # ---- Partner Center -> CRM: a new referral --------------------------------------------------------
    def _create_in_crm(self, referral: Referral, link: Link | None) -> None:
        assert referral.id is not None
        kind = rules.crm_object_for(referral)
        skipped = self._not_for_the_crm(referral, kind, link)
        if skipped is not None:
            log.info(skipped)
            self.state.append_audit(
                link_id_for_referral(referral.id), direction="pc->crm", outcome="skipped", message=skipped
            )
            return
        owner = uuid.uuid4().hex
        claimed = self._claim_referral(referral, kind, link, owner)
        if claimed is None:
            return
        try:
            self._write_new_crm_record(referral, kind, claimed)
        finally:  # an upsert by referral id is safe to run again: let the queue's retry in at once
            self._release_lease(claimed.link_id, owner)

    def _write_new_crm_record(self, referral: Referral, kind: CrmObjectKind, link: Link) -> None:
        assert referral.id is not None
        pc = referral_view(referral)
        account_id = None
        if kind == "opportunity" and pc.get("customer"):
            account_id = self.crm.find_or_create_account(crm_account(pc["customer"]))
        fields = {spec.name: pc[spec.name] for spec in FIELDS if spec.direction == "both" and spec.name in pc}
        if kind == "lead" and not self.capabilities.lead_has_name:
            fields.pop("name", None)  # the lead's company is the customer; it has no deal name
        values = record_update(
            fields,
            crm_object=kind,
            lifecycle=creation_lifecycle(pc["lifecycle"]),
            sync_enabled=True,
            **mirror_columns(pc, {}, self._link_url(referral)),
            **({"account_id": account_id} if account_id else {}),
        )
        notes: list[str] = []
        if kind == "opportunity" and values.close_date is None:
            # An opportunity needs a close date (Salesforce requires one); Microsoft's referrals may not have one yet.
            default = (referral.expiration_date_time or self.clock() + dt.timedelta(days=90)).date()
            values = values.model_copy(update={"close_date": default})
            values.model_fields_set.add("close_date")
            notes.append(f"close date set to {default.isoformat()} because the referral has none")
        try:
            result = self.crm.upsert_by_referral_id(kind, referral.id, values)
        except CrmValidationError as error:
            message = f"could not create the CRM {kind} for referral {referral.id}: {error}"
            log.error(message)
            link.last_error, link.status = message, "error"
            self.state.save_link(link)
            self.state.append_audit(link.link_id, direction="pc->crm", outcome="error", message=message)
            return
        ref = result.ref
        self._write_related(ref, {name: value for name, value in fields.items() if value}, account_id)
        # Linked at once, with what we wrote as the base: a retry after a later failure merges with
        # the record (a seller's acceptance meanwhile is a change to send) instead of upserting
        # Partner Center's values, pending stage included, over it again (issue 19). No `pc_etag`
        # yet, so the retry does not take the referral as synced.
        view = self._crm_view(self.crm.read(ref))
        link = self._save(
            link.model_copy(
                update={"crm_object": kind, "crm_id": ref.id, "state": "linked", "snapshot": snapshot(pc, view, view)}
            )
        )
        line = f"Partner Center -> CRM: created from Partner Center referral {referral.id}"
        line = "; ".join([line, *notes])
        self._finish_linked(link, ref, referral, pc, line, direction="pc->crm", before=view)
        log.info("referral %s -> new CRM %s %s", referral.id, kind, ref.id)

    def _not_for_the_crm(self, referral: Referral, kind: CrmObjectKind, link: Link | None) -> str | None:
        """Why a new referral is not created in the CRM, if it is not."""
        if kind == "lead" and self.settings.sync_cosell_only:
            return (
                f"lead referral {referral.id} ({referral.name}) not synced: SYNC_COSELL_ONLY=true sends only "
                "co-sell and pipeline referrals to the CRM"
            )
        if referral.is_closed and link is None:
            return f"referral {referral.id} was closed ({referral.substatus}) before it was ever synced; not created in the CRM"
        return None

    def _claim_referral(self, referral: Referral, kind: CrmObjectKind, link: Link | None, owner: str) -> Link | None:
        """The write-ahead `creating` link of a new referral, leased to `owner` (another worker
        creating it makes this message wait: two upserts at once doubled child rows, issue 19);
        None when another worker linked it already (then it was synced here instead)."""
        assert referral.id is not None
        link_id = link_id_for_referral(referral.id)
        if link is None:
            intent = Link(link_id=link_id, referral_id=referral.id, crm_object=kind, state="creating")
            try:
                return self.state.create_link(
                    intent.model_copy(update={"lease_owner": owner, "lease_until": self.clock() + LINK_LEASE})
                )
            except AlreadyExistsError:
                link = self.state.get_link(link_id)
            if link is None:
                raise SyncRetryError(f"link {link_id} vanished while being created") from None
        if link.crm_id is not None:
            self._sync_link(link, referral=referral)
            return None
        return self._take_lease(link, owner, state="creating")

    def _adopt(self, record: CrmRecord, referral_id: str) -> None:
        """A CRM record that names its referral, but no link (state lost, or records made by
        Microsoft's connector): link them as they are, then sync what differs from now on."""
        try:
            referral = self.pc.get_referral(referral_id)
        except PartnerCenterNotFoundError:
            # Remember the refusal in a link, so our own write to the record does not bring it back.
            message = f"Not synced: the referral {referral_id} named on this record does not exist in Partner Center"
            orphan = Link(
                link_id=link_id_for_referral(referral_id),
                referral_id=referral_id,
                crm_object=record.ref.kind,
                crm_id=record.ref.id,
                state="error",
            )
            try:
                orphan = self.state.create_link(orphan)
            except AlreadyExistsError:
                return  # someone linked it meanwhile; their sync covers it
            self._record_error(orphan, message, direction="both", ref=record.ref)
            return
        pc, crm = referral_view(referral), self._crm_view(record)
        link = Link(
            link_id=link_id_for_referral(referral_id),
            referral_id=referral_id,
            crm_object=record.ref.kind,
            crm_id=record.ref.id,
            state="linked",
            pc_etag=referral.e_tag,
            snapshot=snapshot(pc, crm, crm),
        )
        try:
            link = self.state.create_link(link)
        except AlreadyExistsError:
            return  # someone linked it meanwhile; their sync covers it
        self.state.append_audit(
            link.link_id, direction="both", outcome="linked", message=f"adopted {record.ref.kind} {record.ref.id}"
        )
        self._sync_link(link, referral=referral, record=record)

    # ---- CRM -> Partner Center: a new referral --------------------------------------------------------
    def _create_in_pc(self, record: CrmRecord, link: Link | None) -> None:
        ref = record.ref
        view = self._crm_view(record)
        problems = rules.partner_center_problems(
            view, accept_country_names=self.settings.accept_country_names, creating=True
        )
        if problems and not (link and link.referral_id):
            self._refuse_new(record, link, "Not sent to Partner Center: " + "; ".join(problems))
            return
        retrying = link is not None and link.state == "creating"
        # An expired lease was taken out before its holder's POST, so that POST has landed or never will.
        settled = retrying and link is not None and link.lease_until is not None
        # ...and it was taken out (lease_until - settle) before that POST: the lookup starts there.
        posted_after = link.lease_until - self._create_settle() if settled and link and link.lease_until else None
        owner = uuid.uuid4().hex
        link = self._write_ahead(ref, link, owner)
        try:
            referral = self._referral_of_intent(link, retrying, posted_after=posted_after)
        except PartnerCenterNotFoundError as gone:
            self._unlink_missing(link, gone)
            return
        if referral is None:
            # the claim, under the row's ETag, right before the POST
            link = self._take_lease(link, owner, self._create_settle(), state="creating")
            body = new_referral(view, crm_record_id=ref.id, accept_country_names=self.settings.accept_country_names)
            try:
                referral = self.pc.create_referral(body)
            except PartnerCenterValidationError as error:
                self._refuse_new(record, link, f"Partner Center refused the referral: {error}")
                return
        link = self.state.save_link(link.model_copy(update={"referral_id": referral.id}))
        try:
            self._link_new_referral(record, view, link, referral)
        except Exception:
            # The referral id is saved: a retry reads it back and needs no wait for a POST to land.
            self._release_lease(link.link_id, owner)
            raise

    def _link_new_referral(self, record: CrmRecord, view: View, link: Link, referral: Referral) -> None:
        """Write the new referral's id and mirrors back to the CRM record and link them."""
        ref = record.ref
        pc = referral_view(referral)
        write_back = mirror_columns(pc, view, self._link_url(referral))
        write_back["referral_id"] = referral.id
        visible = BY_NAME["visible"]
        if pc.get("visible") and not view.get("visible") and visible.crm_columns is not None:
            write_back.update(visible.crm_columns(True, ref.kind))  # co-sell is always shared with Microsoft sellers
        self.crm.update_fields(ref, RecordUpdate(**write_back))
        line = f"CRM -> Partner Center: created Partner Center referral {referral.id}"
        link, fresh = self._finish_linked(
            link, ref, referral, pc, line, direction="crm->pc", before=view, written=MIRRORS | {"visible"}
        )
        log.info("%s %s -> new referral %s", ref.kind, ref.id, referral.id)
        # A deal synced when already closed: the status rules close the referral right away.
        self._sync_link(link, referral=referral, record=fresh)

    def _create_settle(self) -> dt.timedelta:
        """How long after it was sent a Partner Center create can still land: a `creating` intent's
        lease lasts this long, so whoever takes it over after it expires can trust a lookup."""
        return dt.timedelta(seconds=self.settings.pc_http_timeout_seconds) + CREATE_SETTLE_MARGIN

    def _write_ahead(self, ref: CrmRef, link: Link | None, owner: str) -> Link:
        """The `creating` intent, leased to `owner`, saved before any POST. Another worker holding it
        (or winning the race to it) makes this message wait (`LinkBusyError`): two messages for one
        new record can never both POST."""
        if link is None:
            intent = Link(
                link_id=link_id_for_crm(ref.kind, ref.id),
                crm_object=ref.kind,
                crm_id=ref.id,
                state="creating",
                lease_owner=owner,
                lease_until=self.clock() + self._create_settle(),
            )
            try:
                return self.state.create_link(intent)
            except AlreadyExistsError:
                raise LinkBusyError(
                    f"link {intent.link_id} is being created by another worker", retry_after_seconds=BUSY_RETRY_SECONDS
                ) from None
        return self._take_lease(link, owner, self._create_settle(), state="creating")

    def _referral_of_intent(self, link: Link, retrying: bool, *, posted_after: dt.datetime | None) -> Referral | None:
        """The referral this intent already has, or one an earlier attempt may have created."""
        if link.referral_id:
            return self.pc.get_referral(link.referral_id)
        if not retrying or link.crm_id is None:
            return None
        # The earlier POST may still be on its way to Partner Center (its answer was lost, not
        # necessarily the request): look only once it can no longer land unseen. An intent without
        # a lease (saved before leases) waits here; a leased one waited for its lease to expire.
        remaining = (link.updated_at + self._create_settle() - self.clock()).total_seconds()
        if remaining > 0 and posted_after is None:
            log.info("waiting %.1f s for an earlier create of %s to land before looking", remaining, link.link_id)
            self.sleep(remaining)
        referral = self._find_created_referral(link.crm_id, since=posted_after or link.updated_at)
        if referral is not None:
            log.info("found referral %s created by an earlier attempt for %s", referral.id, link.link_id)
        return referral

    def _refuse_new(self, record: CrmRecord, link: Link | None, message: str) -> None:
        """A record that cannot become a referral yet: say why on the record, remember we said it."""
        ref = record.ref
        if link is None:
            link = Link(link_id=link_id_for_crm(ref.kind, ref.id), crm_object=ref.kind, crm_id=ref.id, state="error")
            try:
                link = self.state.create_link(link)
            except AlreadyExistsError:
                found = self.state.get_link(link.link_id)
                if found is None:
                    raise SyncRetryError(f"link {link.link_id} vanished") from None
                link = found
        log.info("%s %s not sent to Partner Center: %s", ref.kind, ref.id, message)
        self._record_error(
            link, message, direction="crm->pc", ref=ref, state="error" if link.referral_id is None else link.state
        )

    def _record_error(
        self, link: Link, message: str, *, direction: str, ref: CrmRef | None, state: LinkState | None = None
    ) -> None:
        """Say a permanent problem once: on the CRM record `ref` (audit line, Sync status Error, the
        ✖ mark) when given, and on the link. Said already (the seller changed something unrelated,
        or our own write came back): nothing, so our write cannot start a loop."""
        if link.last_error == message:
            return
        update: dict[str, Any] = {"status": "error", "last_error": message, "lease_owner": None, "lease_until": None}
        if state is not None:
            update["state"] = state
        if ref is not None:
            self.crm.set_sync_result(ref, "Error", self.clock(), audit_line=message)
            fresh = self.crm.read(ref)
            update["snapshot"] = {**link.snapshot, "crm_seen": fingerprint(self._crm_view(fresh))}
        self._save(link.model_copy(update=update))
        self.state.append_audit(link.link_id, direction=direction, outcome="error", message=message)

    # ---- an existing link ------------------------------------------------------------------------------
    def _sync_link(
        self,
        link: Link,
        *,
        referral: Referral | None = None,
        record: CrmRecord | None = None,
        related: Referral | None = None,
    ) -> None:
        assert link.referral_id is not None and link.crm_object is not None and link.crm_id is not None
        owner = uuid.uuid4().hex
        link = self._take_lease(link, owner)
        try:
            self._sync_leased(link, referral=referral, record=record, related=related)
        finally:
            self._release_lease(link.link_id, owner)

    def _take_lease(self, link: Link, owner: str, duration: dt.timedelta = LINK_LEASE, **update: Any) -> Link:
        """At most one sync of a link at a time, across threads and Function instances: a lease on
        the link row, taken under its ETag, expiring by itself if its holder dies. A busy link makes
        this message wait (`LinkBusyError`); when it runs again it finds the holder's result and
        usually nothing left to do, so a burst collapses into one sync after the running one."""
        now = self.clock()
        if link.leased_to_another(owner, now):
            raise LinkBusyError(
                f"link {link.link_id} is being synced by another worker", retry_after_seconds=BUSY_RETRY_SECONDS
            )
        try:
            return self.state.save_link(
                link.model_copy(update={**update, "lease_owner": owner, "lease_until": now + duration})
            )
        except ConcurrencyConflictError:
            raise LinkBusyError(
                f"link {link.link_id} was taken by another worker", retry_after_seconds=BUSY_RETRY_SECONDS
            ) from None

    def _release_lease(self, link_id: str, owner: str) -> None:
        current = self.state.get_link(link_id)
        if current is None or current.lease_owner != owner:
            return  # released already (the link was re-linked or marked in error), or expired and taken
        try:
            self.state.save_link(current.model_copy(update={"lease_owner": None, "lease_until": None}))
        except ConcurrencyConflictError:
            log.warning("link %s changed before its lease was released; the lease expires by itself", link_id)

    def _sync_leased(
        self,
        link: Link,
        *,
        referral: Referral | None = None,
        record: CrmRecord | None = None,
        related: Referral | None = None,
    ) -> None:
        assert link.referral_id is not None and link.crm_object is not None and link.crm_id is not None
        for attempt in range(1, MAX_MERGE_ATTEMPTS + 1):
            try:
                referral = referral or self.pc.get_referral(link.referral_id)
                record = record or self.crm.read(CrmRef(kind=link.crm_object, id=link.crm_id))
            except (PartnerCenterNotFoundError, CrmNotFoundError) as gone:
                self._unlink_missing(link, gone)
                return
            try:
                changed_meanwhile = self._merge_and_write(link, referral, record, related)
                if changed_meanwhile is None:
                    return
                log.info(
                    "%s %s changed while we wrote; merging again (attempt %d)", record.ref.kind, record.ref.id, attempt
                )
                fresh = self.state.get_link(link.link_id)
                if fresh is None or fresh.crm_id is None:
                    raise SyncRetryError(f"link {link.link_id} changed shape while we merged")
                link, referral, record = fresh, None, changed_meanwhile
            except PartnerCenterConflictError:
                log.info(
                    "referral %s changed while we merged (412); merging again (attempt %d)", link.referral_id, attempt
                )
                referral = None
            except ConcurrencyConflictError:
                log.info("link %s was saved by another worker; merging again (attempt %d)", link.link_id, attempt)
                fresh = self.state.get_link(link.link_id)
                if fresh is None or fresh.crm_id is None:
                    raise SyncRetryError(f"link {link.link_id} changed shape while we merged") from None
                link, referral, record = fresh, None, None
            except CrmValidationError as refused:
                self._crm_refused(link, record, refused)
                return
        raise SyncRetryError(f"link {link.link_id} kept changing on both sides; the queue will retry")

    def _crm_refused(self, link: Link, record: CrmRecord, refused: CrmValidationError) -> None:
        """The CRM refused Partner Center's data (a validation rule, a required field, a bad
        picklist value): retrying cannot help. Say so on the record once; the next change retries."""
        message = f"Partner Center -> CRM: the CRM refused the update: {refused}"
        log.warning("link %s: %s", link.link_id, message)
        self._record_error(link, message, direction="pc->crm", ref=record.ref)

    def _unlink_missing(self, link: Link, gone: Exception) -> None:
        """One side of the link no longer exists (deleted, or no longer visible to our sign-in):
        nothing can be synced, and retrying will not help. Say so once, on the link and, when it
        is the referral that went, on the CRM record."""
        ref = None
        if isinstance(gone, PartnerCenterNotFoundError):
            message = f"Not synced: the referral {link.referral_id} no longer exists in Partner Center (or this sign-in cannot see it)"
            if link.crm_object and link.crm_id:
                ref = CrmRef(kind=link.crm_object, id=link.crm_id)
        else:
            message = f"Not synced: the CRM {link.crm_object} {link.crm_id} no longer exists"
        log.warning("link %s: %s", link.link_id, message)
        self._record_error(link, message, direction="both", ref=ref, state="error")

    def _merge_and_write(
        self, link: Link, referral: Referral, record: CrmRecord, related: Referral | None
    ) -> CrmRecord | None:
        """Plan (shared/sync/plan.py), then carry the plan out: patch Partner Center, write the CRM,
        say what happened on the record and in the audit, save the new snapshot. Returns the CRM
        record when someone changed it while we wrote (that change is still to be synced)."""
        pc = referral_view(referral, self._context(related))
        crm = self._crm_view(record)
        base_pc, base_crm = normalised(link.snapshot.get("pc") or {}), normalised(link.snapshot.get("crm") or {})
        facts = self._facts(link, referral, record)
        pc_plan = plan_partner_center(pc, crm, base_pc, base_crm, dict(link.snapshot.get("held") or {}), facts)
        pc_plan = self._without_fields_partner_center_keeps(referral, pc_plan)  # issue 12
        updated, pc_plan = self._patch_partner_center(referral, pc_plan)
        pc_after = referral_view(updated, self._context(related)) if updated is not referral else pc
        crm_plan = plan_crm(pc_after, crm, base_pc, pc_plan, facts)
        if crm_plan.follow_opportunity is not None:
            # A converted lead is read-only in both CRMs: the referral moves on to the opportunity.
            self._follow_conversion(link, updated, crm_plan.follow_opportunity, pc_plan.sent_labels())
            return None
        crm_written = self._write_crm(record.ref, crm_plan)
        outcome = plan_outcome(pc_plan, crm_written, facts)
        fresh = record
        if outcome.sync_result is not None:
            self.crm.set_sync_result(record.ref, outcome.sync_result, self.clock(), audit_line=outcome.line or None)
            fresh = self.crm.read(record.ref)
        elif crm_written:
            fresh = self.crm.read(record.ref)
        error = pc_plan.error
        fresh_view = self._crm_view(fresh)
        left = as_written(crm, fresh_view, crm_plan.written)  # the base is what we wrote (issue 19)
        new_snapshot = next_snapshot(pc_after, left, base_crm, pc_plan)
        if new_snapshot != link.snapshot or updated.e_tag != link.pc_etag or error != link.last_error:
            wrote = bool(pc_plan.sent_labels() or crm_written)
            link = self._save(
                link.model_copy(
                    update={
                        "snapshot": new_snapshot,
                        "pc_etag": updated.e_tag,
                        "last_error": error,
                        "status": "error" if error else "synced",
                        "last_synced_at": self.clock() if wrote else link.last_synced_at,
                    }
                )
            )
        if outcome.parts:
            self.state.append_audit(
                link.link_id, direction=outcome.audit_direction, outcome=outcome.audit_outcome, message=outcome.line
            )
            log.info("link %s: %s", link.link_id, outcome.line)
        return None if fresh_view == left else fresh

    def _facts(self, link: Link, referral: Referral, record: CrmRecord) -> Facts:
        return Facts(
            crm_object=record.ref.kind,
            pc_substatus=referral.substatus,
            pc_modified_at=referral.updated_date_time,
            crm_modified_at=record.modified_at,
            converted_opportunity_id=(
                record.stage.converted_opportunity_id if self.capabilities.converts_leads else None
            ),
            crm_sync_status=record.connector.sync_status,
            last_error=link.last_error,
            referral_link=self._link_url(referral),
            has_pending_stage=self.capabilities.pending_stage is not None,
            accept_country_names=self.settings.accept_country_names,
        )

    def _without_fields_partner_center_keeps(self, referral: Referral, plan: PartnerCenterPlan) -> PartnerCenterPlan:
        """issue 12: a change Partner Center takes no PATCH for (the contract's paths) is not sent; the
        audit says Partner Center keeps its own value once, and since the field does not join `unsent`
        the CRM value becomes the merge base, so the change is not offered again.
        (Ideally the planner asks the contract before its checks; until then this runs after them.)"""
        if not plan.sends:
            return plan
        _, kept = patch_operations(
            referral, plan.to_pc, plan.status, accept_country_names=self.settings.accept_country_names
        )
        if not kept:
            return plan
        labels = ", ".join(label(name) for name in kept)
        note = f"Partner Center keeps its own {labels}: it does not accept changes to it after creation"
        to_pc = {name: value for name, value in plan.to_pc.items() if name not in kept}
        return replace(plan, to_pc=to_pc, notes=(*plan.notes, note))

    def _patch_partner_center(self, referral: Referral, plan: PartnerCenterPlan) -> tuple[Referral, PartnerCenterPlan]:
        """Send the planned patch under the referral's ETag (a 412 propagates: the merge runs again).
        Returns the referral as Partner Center now has it, and the plan as it turned out."""
        assert referral.id is not None
        if not plan.sends:
            return referral, plan
        operations, _ = patch_operations(
            referral, plan.to_pc, plan.status, accept_country_names=self.settings.accept_country_names
        )
        try:
            answer = self.pc.update_referral(referral.id, operations, etag=referral.e_tag)
        except PartnerCenterValidationError as refused:
            return referral, plan.refused(f"Partner Center refused the update: {refused}")
        return answer or self.pc.get_referral(referral.id), plan

    def _write_crm(self, ref: CrmRef, plan: CrmPlan) -> tuple[str, ...]:
        """Write Partner Center's changes (and status) to the CRM record; returns what the audit says was written."""
        if not plan.writes:
            return ()
        columns = dict(plan.columns)
        account_id = None
        if ref.kind == "opportunity" and plan.changes.get("customer"):
            account_id = columns["account_id"] = self.crm.find_or_create_account(crm_account(plan.changes["customer"]))
        self.crm.update_fields(ref, record_update(plan.changes, crm_object=ref.kind, **columns))
        self._write_related(ref, plan.changes, account_id)
        return plan.labels

    def _follow_conversion(self, link: Link, referral: Referral, opportunity_id: str, sent: list[str]) -> Link:
        """A qualified lead became an opportunity: the referral's link moves to it (SPEC 1.3)."""
        assert referral.id is not None
        lead_id = link.crm_id
        opportunity = CrmRef(kind="opportunity", id=opportunity_id)
        pc = referral_view(referral)
        update = record_update(
            {spec.name: pc[spec.name] for spec in FIELDS if spec.connector_column and spec.name in pc},
            crm_object="opportunity",
            sync_enabled=True,
            referral_id=referral.id,
            **mirror_columns(pc, {}, self._link_url(referral)),
        )
        self.crm.update_fields(opportunity, update)
        self._write_related(opportunity, {"solutions": pc["solutions"]} if pc.get("solutions") else {}, None)
        line = (
            f"Partner Center -> CRM: lead {lead_id} was qualified; referral {referral.id} now follows this opportunity"
        )
        if sent:
            line = f"CRM -> Partner Center: updated {', '.join(sent)}; {line}"
        return self._finish_linked(link, opportunity, referral, pc, line, direction="pc->crm")[0]

    def _finish_linked(
        self,
        link: Link,
        ref: CrmRef,
        referral: Referral,
        pc: View,
        line: str,
        *,
        direction: str,
        before: View | None = None,
        written: frozenset[str] = frozenset(),
    ) -> tuple[Link, CrmRecord]:
        """After writing a new or moved link's CRM record: mark it Synced with `line` in its audit,
        read it back once, and save the link as linked with both sides as the new merge base. With
        `before` (the record as read before we wrote `written`), the CRM base is what we wrote, so a
        seller's edit landing meanwhile stays a change to sync (issue 19)."""
        self.crm.set_sync_result(ref, "Synced", self.clock(), audit_line=line)
        record = self.crm.read(ref)
        view = self._crm_view(record)
        if before is not None:
            view = as_written(before, view, written)
        linked = link.model_copy(
            update={
                "crm_object": ref.kind,
                "crm_id": ref.id,
                "state": "linked",
                "status": "synced",
                "last_error": None,
                "pc_etag": referral.e_tag,
                "last_synced_at": self.clock(),
                "snapshot": snapshot(pc, view, view),
                "lease_owner": None,
                "lease_until": None,
            }
        )
        saved = self._save(linked)
        self.state.append_audit(link.link_id, direction=direction, outcome="synced", message=line)
        return saved, record

    def _save(self, link: Link) -> Link:
        if link.etag is None:
            return self.state.create_link(link)
        return self.state.save_link(link)
