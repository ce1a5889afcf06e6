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
from shared.sync.queues import CrmChange, PartnerCenterChange, QueueProducer
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
    name = crm_watermark_name(crm)
    cursor = _CursorRow(state, name)
    queued: set[CrmRef] = set()

    def queue_page(page: Sequence[ChangedRecord], stamp: dt.datetime | None) -> None:
        key = change_key(page[0])
        cursor.save(cursor.value.model_copy(update={"stamp": stamp, "pending": key}))
        state.remember_page(name, key, [change_key(change) for change in page])
        refs = list(dict.fromkeys(change.ref for change in page if change.ref not in queued))
        queue.send_all([CrmChange(object=ref.kind, record_id=ref.id) for ref in refs])
        queued.update(refs)

    if cursor.value.pending:
        interrupted = state.remembered_page(name, cursor.value.pending)
        if interrupted:  # else the poll stopped before remembering it, so before queuing any of it
            log.warning("CRM poll: queuing again a page of %d change(s) a poll did not finish", len(interrupted))
            queue_page([parse_change_key(key) for key in interrupted], cursor.value.stamp)
    pages = state.remembered_pages(name)
    known = {key for keys in pages.values() for key in keys}
    feed = cursor.value.position is not None
    since = window_start(cursor.value.stamp, crm.poll_overlap) if cursor.value.stamp and not feed else None
    found = crm.changed_since(since, position=cursor.value.position)
    fresh = [change for change in found.changes if change_key(change) not in known]
    newest = cursor.value.stamp
    complete = True
    for start in range(0, len(fresh), PAGE_SIZE):
        if len(queued) >= max_queued:
            complete = False
            break
        page = fresh[start : start + min(PAGE_SIZE, max_queued - len(queued))]
        newest = max(newest, page[-1].stamp) if newest else page[-1].stamp
        queue_page(page, newest)
        if start + len(page) < len(fresh) and len(page) < PAGE_SIZE:
            complete = False
            break
    if complete and found.changes:
        latest = found.changes[-1].stamp
        newest = max(newest, latest) if newest else latest
    # A feed's new position only once all it returned is queued; timestamp polling has none.
    final = PollCursor(stamp=newest, position=found.position if complete else cursor.value.position)
    if final != cursor.value or not cursor.exists:
        cursor.save(final)
    if complete and found.position is not None:
        stale = list(pages) + [key for key in state.remembered_pages(name) if key not in pages]
    elif since is not None:
        boundary = stamp_key(since)
        stale = [page for page, keys in pages.items() if not keys or keys[-1] < boundary]
    else:
        stale = []
    if stale:
        state.forget_pages(name, stale)
    if queued:
        log.info(
            "CRM poll: %d changed record(s) enqueued%s",
            len(queued),
            "" if complete else f" (stopped at {max_queued}; the next poll goes on)",
        )
    return len(queued)


def reconcile_partner_center(
    partner_center: PartnerCenterClient,
    state: StateStore,
    queue: QueueProducer,
    *,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> int:
    """Enqueue every referral Partner Center changed since the last run (catches webhooks Partner
    Center gave up delivering, reference 2.5); returns how many."""
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
        queue.send(PartnerCenterChange(referral_id=referral.id, event="reconcile"))
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
