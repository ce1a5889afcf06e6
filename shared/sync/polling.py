"""The two timers that find changes: the CRM poll and the Partner Center reconcile poll.

Both only enqueue `sync` messages (ids, never records). Watermarks come from the other system's own
timestamps, never from our clock.

The CRM poll (issue 20) re-reads an overlap window and recognises what it already reported by one
row per change (shared/crm/watermark.py), and queues in pages of `PAGE_SIZE`. For each page it
first saves the cursor naming the page (so storage proves it takes writes before anything is
queued), then remembers the page's changes, then queues them. A poll that stops anywhere in
between - storage refusing a write, the queue failing, the host timing out - leaves that page in
the cursor; the next poll queues that page again (at most `PAGE_SIZE` duplicates, which the engine
absorbs) and never the rest of the window, and no change is lost. A poll also stops after
`MAX_QUEUED_PER_POLL` changes and the next one goes on from there, so a bulk change of any size is
queued in bounded runs.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

from shared import telemetry
from shared.crm.port import ChangedRecord, CrmPort, CrmRef
from shared.crm.watermark import (
    PAGE_SIZE,
    PollCursor,
    WatermarkError,
    change_key,
    parse_change_key,
    stamp_key,
    window_start,
)
from shared.model.referral import format_pc_datetime, parse_pc_datetime
from shared.partner_center.client import PartnerCenterClient
from shared.sync.queues import CrmChange, PartnerCenterChange, QueueProducer, message_attributes
from shared.sync.state import StateStore

log = logging.getLogger(__name__)

RECONCILE_WATERMARK = "pc-reconcile"
RECONCILE_FIRST_LOOKBACK = dt.timedelta(hours=24)
"""The first reconcile run looks this far back (a fresh install does not import years of history)."""
RECONCILE_OVERLAP = dt.timedelta(minutes=1)
"""Re-read this much before the watermark: referrals committed late with an earlier updatedDateTime."""
MAX_QUEUED_PER_POLL = 5_000
"""Records one CRM poll queues at most; the next poll resumes after the last one queued."""


POLL_STALLED_AFTER = dt.timedelta(minutes=10)
"""A page left unfinished this long, with no poll moving on since, makes the health report degraded."""


def crm_watermark_name(crm: CrmPort | str) -> str:
    """The poller's name: `crm-poll-salesforce` or `crm-poll-dynamics` (a CRM or its kind)."""
    return f"crm-poll-{crm if isinstance(crm, str) else crm.kind}"


def crm_poll_health(
    state: StateStore, crm_kind: str, *, now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
) -> tuple[dict[str, Any], bool]:
    """The health report's view of the CRM poll: where it stands, and whether polls have been
    failing (a page left unfinished and no poll has saved anything since)."""
    stored = state.get_watermark(crm_watermark_name(crm_kind))
    if stored is None:
        return {"newest_change": None}, True
    try:
        cursor = PollCursor.parse(stored.value)
    except WatermarkError as error:
        return {"problem": str(error)}, False
    body: dict[str, Any] = {
        "newest_change": cursor.stamp.isoformat() if cursor.stamp else None,
        "saved_at": stored.updated_at.isoformat(),
        "unfinished_page": cursor.pending is not None,
    }
    stalled = cursor.pending is not None and now() - stored.updated_at > POLL_STALLED_AFTER
    if stalled:
        body["problem"] = (
            f"a CRM poll stopped while queuing a page at {stored.updated_at:%Y-%m-%d %H:%M}Z and no poll has "
            "moved on since: see the failures of the poll_crm_changes function (storage or queue errors)"
        )
    return body, not stalled


class _CursorRow:
    """The poller's cursor row and its ETag: every save is conditional, so two pollers running at
    once cannot both move it (the second gets ConcurrencyConflictError and stops)."""

    def __init__(self, state: StateStore, name: str) -> None:
        self.state = state
        self.name = name
        stored = state.get_watermark(name)
        self.etag = stored.etag if stored else None
        self.exists = stored is not None
        self.value = PollCursor.parse(stored.value if stored else None)

    def save(self, value: PollCursor) -> None:
        saved = self.state.save_watermark(self.name, value.dump(), etag=self.etag if self.exists else None)
        self.etag, self.exists, self.value = saved.etag, True, value


def poll_crm(crm: CrmPort, state: StateStore, queue: QueueProducer, *, max_queued: int = MAX_QUEUED_PER_POLL) -> int:
    """Enqueue every CRM record with Sync = Yes changed since the last poll; returns how many
    records this run queued (each at most once per run)."""
    with telemetry.span("poll CRM", {telemetry.SOURCE: "crm"}):
        return _poll_crm(crm, state, queue, max_queued)


def _poll_crm(crm: CrmPort, state: StateStore, queue: QueueProducer, max_queued: int) -> int:
    run = _CrmPollRun(crm, state, queue)
    run.finish_interrupted_page()
    pages = state.remembered_pages(run.name)
    known = {key for keys in pages.values() for key in keys}
    start = run.cursor.value
    since = window_start(start.stamp, crm.poll_overlap) if start.stamp and start.position is None else None
    found = crm.changed_since(since, position=start.position)
    complete = run.queue_fresh([change for change in found.changes if change_key(change) not in known], max_queued)
    newest = run.cursor.value.stamp
    if complete and found.changes:
        newest = max(newest, found.changes[-1].stamp) if newest else found.changes[-1].stamp
    # A feed's new position only once all it returned is queued; timestamp polling has none.
    final = PollCursor(stamp=newest, position=found.position if complete else start.position)
    if final != run.cursor.value or not run.cursor.exists:
        run.cursor.save(final)
    if complete and found.position is not None:  # the feed moved past everything remembered
        stale = list(state.remembered_pages(run.name))
    else:  # pages whose newest change the next window no longer reaches
        boundary = stamp_key(since) if since else ""
        stale = [page for page, keys in pages.items() if not keys or keys[-1] < boundary]
    if stale:
        state.forget_pages(run.name, stale)
    if run.queued:
        log.info(
            "CRM poll: %d changed record(s) enqueued%s",
            len(run.queued),
            "" if complete else f" (stopped at {max_queued}; the next poll goes on)",
        )
    return len(run.queued)


def _in_its_own_trace(message: CrmChange) -> CrmChange:
    """The message carrying a new trace of its own, linked to the poll's span: one trace per change,
    however many changes one poll enqueues (the page is then sent several messages at a time)."""
    with telemetry.change_trace("CRM change", message_attributes(message)):
        return message.model_copy(update=telemetry.current_trace_context())


class _CrmPollRun:
    """One run of the CRM poll: queues pages of changes, each saved before it is sent."""

    def __init__(self, crm: CrmPort, state: StateStore, queue: QueueProducer) -> None:
        self.name = crm_watermark_name(crm)
        self.state = state
        self.queue = queue
        self.cursor = _CursorRow(state, self.name)
        self.queued: set[CrmRef] = set()

    def finish_interrupted_page(self) -> None:
        pending = self.cursor.value.pending
        interrupted = self.state.remembered_page(self.name, pending) if pending else None
        if interrupted:  # else the poll stopped before remembering it, so before queuing any of it
            log.warning("CRM poll: queuing again a page of %d change(s) a poll did not finish", len(interrupted))
            self.queue_page([parse_change_key(key) for key in interrupted], self.cursor.value.stamp)

    def queue_fresh(self, fresh: Sequence[ChangedRecord], max_queued: int) -> bool:
        """Queue `fresh` page by page, up to `max_queued` records; True when all were queued."""
        done = 0
        while done < len(fresh):
            room = min(PAGE_SIZE, max_queued - len(self.queued))
            if room <= 0:
                return False
            page = fresh[done : done + room]
            stamp = self.cursor.value.stamp
            self.queue_page(page, max(stamp, page[-1].stamp) if stamp else page[-1].stamp)
            done += len(page)
        return True

    def queue_page(self, page: Sequence[ChangedRecord], stamp: dt.datetime | None) -> None:
        key = change_key(page[0])
        self.cursor.save(self.cursor.value.model_copy(update={"stamp": stamp, "pending": key}))
        self.state.remember_page(self.name, key, [change_key(change) for change in page])
        refs = list(dict.fromkeys(change.ref for change in page if change.ref not in self.queued))
        self.queue.send_all([_in_its_own_trace(CrmChange(object=ref.kind, record_id=ref.id)) for ref in refs])
        self.queued.update(refs)


def reconcile_partner_center(
    partner_center: PartnerCenterClient,
    state: StateStore,
    queue: QueueProducer,
    *,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> int:
    """Enqueue every referral Partner Center changed since the last run (catches webhooks Partner
    Center gave up delivering, reference 2.5); returns how many."""
    with telemetry.span("reconcile Partner Center", {telemetry.SOURCE: "pc"}):
        return _reconcile(partner_center, state, queue, clock)


def _reconcile(
    partner_center: PartnerCenterClient, state: StateStore, queue: QueueProducer, clock: Callable[[], dt.datetime]
) -> int:
    mark = state.get_watermark(RECONCILE_WATERMARK)
    if mark is not None:
        since = parse_pc_datetime(mark.value) - RECONCILE_OVERLAP
    else:
        since = clock() - RECONCILE_FIRST_LOOKBACK
    newest: dt.datetime | None = None
    count = 0
    for referral in partner_center.referrals_updated_since(since):
        if not referral.id:
            continue
        message = PartnerCenterChange(referral_id=referral.id, event="reconcile")
        with telemetry.change_trace("Partner Center change", message_attributes(message)):
            queue.send(message)
        count += 1
        if referral.updated_date_time and (newest is None or referral.updated_date_time > newest):
            newest = referral.updated_date_time
    if newest is not None:
        value = format_pc_datetime(newest)
        if mark is None or value > mark.value:
            state.save_watermark(RECONCILE_WATERMARK, value, etag=mark.etag if mark else None)
    if count:
        log.info("Partner Center reconcile: %d referral(s) enqueued", count)
    return count
