"""The two timers that find changes: the CRM poll and the Partner Center reconcile poll.

Both only enqueue `sync` messages (ids, never records) and then move their watermark, in that
order: a crash between the two re-enqueues a few records (harmless, the engine is idempotent),
never skips one. Watermarks come from the other system's own timestamps, never from our clock.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from shared import telemetry
from shared.crm.port import CrmPort
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


def crm_watermark_name(crm: CrmPort) -> str:
    return f"crm-poll-{crm.kind}"


def poll_crm(crm: CrmPort, state: StateStore, queue: QueueProducer) -> int:
    """Enqueue every CRM record with Sync = Yes changed since the last poll; returns how many."""
    with telemetry.span("poll CRM", {telemetry.SOURCE: "crm"}):
        return _poll_crm(crm, state, queue)


def _poll_crm(crm: CrmPort, state: StateStore, queue: QueueProducer) -> int:
    name = crm_watermark_name(crm)
    mark = state.get_watermark(name)
    changes = crm.changed_since(mark.value if mark else None)
    for ref in changes.refs:
        message = CrmChange(object=ref.kind, record_id=ref.id)
        with telemetry.change_trace("CRM change", message_attributes(message)):
            queue.send(message)
    if changes.watermark and changes.watermark != (mark.value if mark else None):
        state.save_watermark(name, changes.watermark, etag=mark.etag if mark else None)
    if changes.refs:
        log.info("CRM poll: %d changed record(s) enqueued", len(changes.refs))
    return len(changes.refs)


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
