"""`backfill --apply`: queue the syncs of a comparison at a bounded rate, resumable after interruption.

The plan (one row per sync to queue) is saved in the `backfill` table before the first message is
sent, and each row is marked once its message is on the queue. An interrupted run (Ctrl-C, a lost
connection, a closed laptop) is resumed by the next `backfill --apply` from the first unmarked row,
so nothing is queued twice and nothing is skipped. A crash between sending a message and marking
its row sends that one message again on resume, which the engine's idempotence makes harmless.

Rows: PartitionKey `run`, RowKey = run id (the run: its scope, totals, finished time); PartitionKey =
run id, RowKey = 6-digit position (one planned sync: the message and a label for the printout).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.backfill.compare import Comparison, Finding, Scope
from shared.sync.queues import QueueProducer, encode_sync_request, parse_sync_request
from shared.sync.storage import StorageAccount

BACKFILL_TABLE = "backfill"
_RUNS = "run"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class BackfillRun:
    run_id: str
    scope: Scope
    created_at: dt.datetime
    total: int
    finished_at: dt.datetime | None = None
    abandoned: bool = False


@dataclass(frozen=True)
class PlannedSync:
    position: int
    payload: str  # the sync request as JSON, without trace context (each send gets its own)
    label: str
    queued_at: dt.datetime | None = None


def label_of(finding: Finding) -> str:
    subject = f"referral {finding.referral_id}" if finding.referral_id else finding.crm_label
    if finding.referral_id and finding.crm:
        subject += f" / {finding.crm_label}"
    return f"{subject}: {finding.action}"


class BackfillStore:
    """The backfill runs and their plans in Table storage."""

    def __init__(self, storage: StorageAccount) -> None:
        self._storage = storage
        self._client: Any = None
        self._lock = threading.Lock()

    def _table(self) -> Any:
        with self._lock:
            if self._client is None:
                client = self._storage.table_client(BACKFILL_TABLE)
                self._storage.ensure_table(client)
                self._client = client
            return self._client

    @staticmethod
    def _run(entity: Any) -> BackfillRun:
        return BackfillRun(
            run_id=entity["RowKey"],
            scope=Scope.from_json(json.loads(entity.get("Scope") or "{}")),
            created_at=entity["CreatedAt"],
            total=int(entity.get("Total") or 0),
            finished_at=entity.get("FinishedAt"),
            abandoned=bool(entity.get("Abandoned")),
        )

    def unfinished(self) -> BackfillRun | None:
        """The newest run that was neither finished nor abandoned."""
        runs = [self._run(item) for item in self._table().query_entities(f"PartitionKey eq '{_RUNS}'")]
        open_runs = [run for run in runs if run.finished_at is None and not run.abandoned]
        return max(open_runs, key=lambda run: run.created_at) if open_runs else None

    def create(self, scope: Scope, planned: list[tuple[str, str]]) -> BackfillRun:
        """Save a new run and its plan ((payload, label) in queueing order); the plan rows first, so
        a run row always has its whole plan."""
        now = _now()
        run = BackfillRun(
            run_id=f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}", scope=scope, created_at=now, total=len(planned)
        )
        table = self._table()
        for position, (payload, label) in enumerate(planned):
            table.create_entity(
                {
                    "PartitionKey": run.run_id,
                    "RowKey": f"{position:06d}",
                    "Payload": payload,
                    "Label": label[:30_000],
                }
            )
        table.create_entity(
            {
                "PartitionKey": _RUNS,
                "RowKey": run.run_id,
                "Scope": json.dumps(scope.to_json()),
                "CreatedAt": now,
                "Total": len(planned),
            }
        )
        return run

    def plan(self, run_id: str) -> list[PlannedSync]:
        entities = self._table().query_entities(f"PartitionKey eq '{run_id}'")
        items = [
            PlannedSync(int(item["RowKey"]), item["Payload"], item.get("Label") or "", item.get("QueuedAt"))
            for item in entities
        ]
        return sorted(items, key=lambda item: item.position)

    def mark_queued(self, run_id: str, position: int) -> None:
        from azure.data.tables import UpdateMode

        self._table().update_entity(
            {"PartitionKey": run_id, "RowKey": f"{position:06d}", "QueuedAt": _now()}, mode=UpdateMode.MERGE
        )

    def close_run(self, run: BackfillRun, *, abandoned: bool = False) -> None:
        from azure.data.tables import UpdateMode

        update: dict[str, Any] = {"PartitionKey": _RUNS, "RowKey": run.run_id}
        update["Abandoned" if abandoned else "FinishedAt"] = True if abandoned else _now()
        self._table().update_entity(update, mode=UpdateMode.MERGE)


class RateLimiter:
    """At most `per_minute` events a minute, evenly spaced (no bursts for the APIs to throttle)."""

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_minute < 1:
            raise ValueError("the rate must be at least one per minute")
        self.interval = 60.0 / per_minute
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def wait(self) -> None:
        now = self._clock()
        if self._next is not None and now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


def plan_of(comparison: Comparison) -> list[tuple[str, str]]:
    """(payload, label) of every sync the comparison says is needed, in report order."""
    planned: list[tuple[str, str]] = []
    for finding in comparison.to_queue:
        assert finding.message is not None
        planned.append((encode_sync_request(finding.message), label_of(finding)))
    return planned


def queue_plan(
    store: BackfillStore,
    run: BackfillRun,
    producer: QueueProducer,
    limiter: RateLimiter,
    *,
    on_queued: Callable[[PlannedSync], None] = lambda _item: None,
) -> list[PlannedSync]:
    """Send every planned sync not yet queued, marking each; finish the run. Returns what was sent now."""
    sent: list[PlannedSync] = []
    for item in store.plan(run.run_id):
        if item.queued_at is not None:
            continue
        limiter.wait()
        producer.send(parse_sync_request(item.payload))
        store.mark_queued(run.run_id, item.position)
        sent.append(item)
        on_queued(item)
    store.close_run(run)
    return sent
