"""Sync state in Azure Table storage: links, watermarks, audit trail and dead letters.

Tables (created on first use; Azure table names are alphanumeric):
- `links`: one row per referral <-> CRM record (PartitionKey `link`), plus reverse index rows
  (PartitionKey `referral` or `crm-<object>`, RowKey = that side's id) pointing at the link.
  A link in state `creating` is the write-ahead intent before a Partner Center referral exists.
- `watermarks`: one row per poller (PartitionKey `watermark`), and for the CRM poll one small row
  per page of changes it queued inside its overlap window (PartitionKey `reported-<poller>`), so
  no row grows with the number of changes (shared/crm/watermark.py).
  The same table records when each timer or intake last
  ran and how it went (PartitionKey `run`, RowKey = job name), which the status page and the
  "no poll for too long" alert read (a watermark only moves when something changed).
- `audit`: PartitionKey = link id, RowKey = inverted time, so a plain query returns newest first.
- `deadletters`: messages that exhausted their retries (PartitionKey `deadletter`, newest first),
  and the last error of a message still being retried (PartitionKey `lasterror`, by payload hash),
  so a dead letter can say *why* it died.
- `activity`: one small row per audit entry, failed queue attempt and dead letter (PartitionKey = UTC hour `YYYYMMDDHH`, newest hours
  last), so "syncs in the last hour / day by outcome" is a read of 24 partitions rather than a
  scan of every link's audit. Rows, not counters: concurrent workers never contend on one row.

Every update carries the row's ETag (optimistic concurrency): a stale writer gets
`ConcurrencyConflictError` and re-reads, it never overwrites someone else's change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.sync.storage import StorageAccount

LINKS_TABLE = "links"
WATERMARKS_TABLE = "watermarks"
AUDIT_TABLE = "audit"
DEADLETTERS_TABLE = "deadletters"
ACTIVITY_TABLE = "activity"
ALL_TABLES = (LINKS_TABLE, WATERMARKS_TABLE, AUDIT_TABLE, DEADLETTERS_TABLE, ACTIVITY_TABLE)

# Activity outcomes besides the audit's own: a queue attempt that raised, a message given up on.
FAILED_ATTEMPT = "failed attempt"
DEAD_LETTER = "dead letter"

CrmObject = Literal["opportunity", "lead"]
LinkState = Literal["creating", "linked", "error", "skipped"]

# A table property holds at most 32K UTF-16 characters; longer JSON is split over numbered columns.
_CHUNK = 30_000
_BATCH = 100  # Table storage's limit of operations in one entity group transaction
_MAX_TIME_US = 10**17  # microseconds; far enough in the future for inverted-time row keys


class StateError(Exception):
    """Base of the state store's own errors."""


class ConcurrencyConflictError(StateError):
    """The row changed since it was read (ETag mismatch): re-read and re-apply."""


class AlreadyExistsError(StateError):
    """A row with this key exists already (another writer created it first)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_key(value: str, what: str) -> str:
    # Table keys may not contain / \ # ? or control characters.
    if not value or any(ch in value for ch in "/\\#?") or any(ord(ch) < 32 or 126 < ord(ch) < 160 for ch in value):
        raise ValueError(
            f"{what} {value!r} cannot be used as a table key (empty, or contains / \\ # ? or a control character)"
        )
    if len(value) > 512:
        raise ValueError(f"{what} is longer than 512 characters")
    return value


def _inverted_time_key(moment: dt.datetime) -> str:
    micros = int(moment.timestamp() * 1_000_000)
    return f"{_MAX_TIME_US - micros:017d}-{uuid.uuid4().hex[:12]}"


def _split_json(prefix: str, value: Any) -> dict[str, str]:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    return {
        f"{prefix}{index}": text[start : start + _CHUNK] for index, start in enumerate(range(0, len(text) or 1, _CHUNK))
    }


def _join_json(prefix: str, entity: dict[str, Any], default: Any) -> Any:
    parts = []
    index = 0
    while f"{prefix}{index}" in entity:
        parts.append(str(entity[f"{prefix}{index}"]))
        index += 1
    return json.loads("".join(parts)) if parts else default


def _etag_of(entity: Any) -> str | None:
    metadata = getattr(entity, "metadata", None) or {}
    etag = metadata.get("etag")
    return str(etag) if etag else None


def link_id_for_referral(referral_id: str) -> str:
    """The id of a link born in Partner Center: stable, so racing creators collide on one row."""
    return f"pc-{_check_key(referral_id, 'referral id')}"


def link_id_for_crm(crm_object: CrmObject, crm_id: str) -> str:
    """The id of a link born in the CRM."""
    return f"crm-{crm_object}-{_check_key(crm_id, 'CRM record id')}"


class Link(BaseModel):
    """One referral <-> CRM record pair and what we last agreed both sides said."""

    model_config = ConfigDict(extra="forbid")

    link_id: str
    referral_id: str | None = None
    crm_object: CrmObject | None = None
    crm_id: str | None = None
    state: LinkState = "linked"
    snapshot: dict[str, Any] = Field(default_factory=dict, description="last synced mapped fields")
    pc_etag: str | None = None
    status: str | None = None
    last_error: str | None = None
    created_at: dt.datetime = Field(default_factory=_now)
    updated_at: dt.datetime = Field(default_factory=_now)
    last_synced_at: dt.datetime | None = None
    lease_owner: str | None = Field(default=None, description="who holds the link's lease (one sync at a time)")
    lease_until: dt.datetime | None = Field(default=None, description="when the lease expires if never released")
    etag: str | None = Field(default=None, description="the row's ETag when read; not stored")

    def leased_to_another(self, owner: str, now: dt.datetime) -> bool:
        """Someone else holds an unexpired lease on this link."""
        return self.lease_owner not in (None, owner) and self.lease_until is not None and self.lease_until > now

    def _entity(self) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": "link",
            "RowKey": _check_key(self.link_id, "link id"),
            "ReferralId": self.referral_id,
            "CrmObject": self.crm_object,
            "CrmId": self.crm_id,
            "State": self.state,
            "PcEtag": self.pc_etag,
            "Status": self.status,
            "LastError": (self.last_error or "")[:_CHUNK] or None,
            "CreatedAt": self.created_at,
            "UpdatedAt": self.updated_at,
            "LastSyncedAt": self.last_synced_at,
            "LeaseOwner": self.lease_owner,
            "LeaseUntil": self.lease_until,
        }
        entity.update(_split_json("Snapshot", self.snapshot))
        return {key: value for key, value in entity.items() if value is not None}

    @classmethod
    def _from_entity(cls, entity: Any) -> Link:
        return cls(
            link_id=entity["RowKey"],
            referral_id=entity.get("ReferralId"),
            crm_object=entity.get("CrmObject"),
            crm_id=entity.get("CrmId"),
            state=entity.get("State", "linked"),
            snapshot=_join_json("Snapshot", entity, {}),
            pc_etag=entity.get("PcEtag"),
            status=entity.get("Status"),
            last_error=entity.get("LastError"),
            created_at=entity.get("CreatedAt") or _now(),
            updated_at=entity.get("UpdatedAt") or _now(),
            last_synced_at=entity.get("LastSyncedAt"),
            lease_owner=entity.get("LeaseOwner"),
            lease_until=entity.get("LeaseUntil"),
            etag=_etag_of(entity),
        )


class Watermark(BaseModel):
    name: str
    value: str
    updated_at: dt.datetime
    etag: str | None = None


class AuditEntry(BaseModel):
    link_id: str
    time: dt.datetime
    direction: str = Field(description="'pc->crm', 'crm->pc' or 'both'")
    outcome: str = Field(description="'synced', 'skipped', 'error', 'conflict', ...")
    message: str


class JobRun(BaseModel):
    """When a timer or the webhook intake last ran, and whether that run succeeded."""

    name: str
    last_run_at: dt.datetime
    succeeded: bool
    error: str | None = None
    last_success_at: dt.datetime | None = None
    failing_since: dt.datetime | None = Field(default=None, description="first failed run since the last success")

    @property
    def healthy_at(self) -> dt.datetime | None:
        """When the job was last known to work: its last success, or else when it started failing."""
        return self.last_success_at or self.failing_since


def _hour_key(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y%m%d%H")


class DeadLetter(BaseModel):
    id: str
    queue: str
    payload: str
    reason: str
    dequeue_count: int
    time: dt.datetime
    replayed_at: dt.datetime | None = None
    etag: str | None = Field(default=None, description="the row's ETag when read; not stored")


class FailureNote(BaseModel):
    error: str
    dequeue_count: int
    time: dt.datetime


class StateStore:
    """All sync state. Thread-safe; table clients are built and tables created on first use."""

    def __init__(self, storage: StorageAccount, *, clock: Callable[[], dt.datetime] = _now) -> None:
        self._storage = storage
        self._clock = clock
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _table(self, name: str) -> Any:
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                client = self._storage.table_client(name)
                self._storage.ensure_table(client)
                self._clients[name] = client
            return client

    def ensure_tables(self) -> None:
        for name in ALL_TABLES:
            self._table(name)

    # ---- links ---------------------------------------------------------------------------------
    def create_link(self, link: Link) -> Link:
        """Insert a new link (and its index rows); `AlreadyExistsError` if the id is taken."""
        from azure.core.exceptions import ResourceExistsError

        now = self._clock()
        link = link.model_copy(update={"created_at": now, "updated_at": now})
        entity = link._entity()
        try:
            metadata = self._table(LINKS_TABLE).create_entity(entity)
        except ResourceExistsError as error:
            raise AlreadyExistsError(f"link {link.link_id} exists already") from error
        saved = link.model_copy(update={"etag": metadata.get("etag")})
        self._write_index(saved, previous=None)
        return saved

    def get_link(self, link_id: str) -> Link | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table(LINKS_TABLE).get_entity("link", _check_key(link_id, "link id"))
        except ResourceNotFoundError:
            return None
        return Link._from_entity(entity)

    def save_link(self, link: Link) -> Link:
        """Replace the link if nobody changed it since it was read (its ETag still matches)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        if link.etag is None:
            raise ValueError(
                "save_link needs a link read from the store (it has no ETag); use create_link for new ones"
            )
        previous = self.get_link(link.link_id)
        updated = link.model_copy(update={"updated_at": self._clock()})
        try:
            metadata = self._table(LINKS_TABLE).update_entity(
                updated._entity(),
                mode=UpdateMode.REPLACE,
                etag=link.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError) as error:
            raise ConcurrencyConflictError(f"link {link.link_id} changed since it was read") from error
        saved = updated.model_copy(update={"etag": metadata.get("etag")})
        self._write_index(saved, previous=previous)
        return saved

    def delete_link(self, link: Link) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError

        try:
            self._table(LINKS_TABLE).delete_entity(
                "link", link.link_id, etag=link.etag, match_condition=MatchConditions.IfNotModified
            )
        except ResourceModifiedError as error:
            raise ConcurrencyConflictError(f"link {link.link_id} changed since it was read") from error
        self._remove_index(link)

    def find_link_by_referral(self, referral_id: str) -> Link | None:
        return self._follow_index("referral", referral_id)

    def find_link_by_crm(self, crm_object: CrmObject, crm_id: str) -> Link | None:
        return self._follow_index(f"crm-{crm_object}", crm_id)

    def list_links(self, *, state: LinkState | None = None) -> Iterator[Link]:
        query = "PartitionKey eq 'link'" + (" and State eq @state" if state else "")
        parameters = {"state": state} if state else None
        for entity in self._table(LINKS_TABLE).query_entities(query, parameters=parameters):
            yield Link._from_entity(entity)

    def _index_keys(self, link: Link | None) -> set[tuple[str, str]]:
        if link is None:
            return set()
        keys = set()
        if link.referral_id:
            keys.add(("referral", link.referral_id))
        if link.crm_object and link.crm_id:
            keys.add((f"crm-{link.crm_object}", link.crm_id))
        return keys

    def _write_index(self, link: Link, previous: Link | None) -> None:
        from azure.data.tables import UpdateMode

        table = self._table(LINKS_TABLE)
        wanted = self._index_keys(link)
        for partition, row in wanted - self._index_keys(previous):
            table.upsert_entity(
                {"PartitionKey": partition, "RowKey": _check_key(row, "id"), "LinkId": link.link_id},
                mode=UpdateMode.REPLACE,
            )
        for partition, row in self._index_keys(previous) - wanted:
            table.delete_entity(partition, row)

    def _remove_index(self, link: Link) -> None:
        table = self._table(LINKS_TABLE)
        for partition, row in self._index_keys(link):
            table.delete_entity(partition, row)

    def _follow_index(self, partition: str, row: str) -> Link | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entry = self._table(LINKS_TABLE).get_entity(partition, _check_key(row, "id"))
        except ResourceNotFoundError:
            return None
        return self.get_link(str(entry["LinkId"]))

    # ---- watermarks ----------------------------------------------------------------------------
    def get_watermark(self, name: str) -> Watermark | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table(WATERMARKS_TABLE).get_entity("watermark", _check_key(name, "watermark name"))
        except ResourceNotFoundError:
            return None
        return Watermark(name=name, value=entity["Value"], updated_at=entity["UpdatedAt"], etag=_etag_of(entity))

    def save_watermark(self, name: str, value: str, *, etag: str | None = None) -> Watermark:
        """Save a watermark. With `etag` (from `get_watermark`) only if it is unchanged; without,
        only if none exists yet. Either way a concurrent poller cannot move it backwards unseen."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        now = self._clock()
        entity = {
            "PartitionKey": "watermark",
            "RowKey": _check_key(name, "watermark name"),
            "Value": value,
            "UpdatedAt": now,
        }
        table = self._table(WATERMARKS_TABLE)
        try:
            if etag is None:
                metadata = table.create_entity(entity)
            else:
                metadata = table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError) as error:
            raise ConcurrencyConflictError(f"watermark {name} changed since it was read") from error
        return Watermark(name=name, value=value, updated_at=now, etag=metadata.get("etag"))

    def remembered_pages(self, poller: str) -> dict[str, list[str]]:
        """The pages of changes `poller` queued and has not forgotten yet: page key -> change keys."""
        entities = self._table(WATERMARKS_TABLE).query_entities(
            "PartitionKey eq @pk", parameters={"pk": self._pages_partition(poller)}
        )
        return {str(entity["RowKey"]): list(_join_json("Keys", entity, [])) for entity in entities}

    def remembered_page(self, poller: str, page: str) -> list[str] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table(WATERMARKS_TABLE).get_entity(self._pages_partition(poller), _check_key(page, "page"))
        except ResourceNotFoundError:
            return None
        return list(_join_json("Keys", entity, []))

    def remember_page(self, poller: str, page: str, keys: list[str]) -> None:
        """Record one page of changes as queued (one row; its keys split over 30K-character columns)."""
        from azure.data.tables import UpdateMode

        entity = {"PartitionKey": self._pages_partition(poller), "RowKey": _check_key(page, "page"), "Count": len(keys)}
        self._table(WATERMARKS_TABLE).upsert_entity({**entity, **_split_json("Keys", keys)}, mode=UpdateMode.REPLACE)

    def forget_pages(self, poller: str, pages: list[str]) -> None:
        """Drop pages the poll can no longer read again (the window moved past them), 100 per batch."""
        partition = self._pages_partition(poller)
        table = self._table(WATERMARKS_TABLE)
        for start in range(0, len(pages), _BATCH):
            table.submit_transaction(
                [("delete", {"PartitionKey": partition, "RowKey": page}) for page in pages[start : start + _BATCH]]
            )

    @staticmethod
    def _pages_partition(poller: str) -> str:
        return _check_key(f"reported-{poller}", "watermark name")

    # ---- audit ---------------------------------------------------------------------------------
    def append_audit(self, link_id: str, *, direction: str, outcome: str, message: str) -> AuditEntry:
        moment = self._clock()
        self._table(AUDIT_TABLE).create_entity(
            {
                "PartitionKey": _check_key(link_id, "link id"),
                "RowKey": _inverted_time_key(moment),
                "Time": moment,
                "Direction": direction,
                "Outcome": outcome,
                "Message": message[:_CHUNK],
            }
        )
        self._count_activity(moment, outcome)
        return AuditEntry(link_id=link_id, time=moment, direction=direction, outcome=outcome, message=message[:_CHUNK])

    def _count_activity(self, moment: dt.datetime, outcome: str) -> None:
        self._table(ACTIVITY_TABLE).create_entity(
            {"PartitionKey": _hour_key(moment), "RowKey": _inverted_time_key(moment), "Outcome": outcome}
        )

    def count_outcomes(self, since: dt.datetime, *, until: dt.datetime | None = None) -> dict[str, int]:
        """How many audit entries of each outcome (plus `failed attempt` per queue retry and
        `dead letter`) were written at or after `since`, across all links."""
        end = until or self._clock()
        counts: dict[str, int] = {}
        entities = self._table(ACTIVITY_TABLE).query_entities(
            "PartitionKey ge @first and PartitionKey le @last",
            parameters={"first": _hour_key(since), "last": _hour_key(end)},
            select=["RowKey", "Outcome"],
        )
        # Inverted-time row keys: a key at or below this one was written at or after `since`.
        newest_allowed = f"{_MAX_TIME_US - int(since.timestamp() * 1_000_000):017d}-~"
        for entity in entities:
            if str(entity["RowKey"]) <= newest_allowed:
                outcome = str(entity.get("Outcome") or "unknown")
                counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def prune_activity(self, older_than: dt.datetime) -> int:
        """Delete activity rows of hours before `older_than`; returns how many went."""
        table = self._table(ACTIVITY_TABLE)
        removed = 0
        for entity in table.query_entities(
            "PartitionKey lt @first", parameters={"first": _hour_key(older_than)}, select=["PartitionKey", "RowKey"]
        ):
            table.delete_entity(entity["PartitionKey"], entity["RowKey"])
            removed += 1
        return removed

    # ---- job runs ------------------------------------------------------------------------------
    def record_run(self, name: str, *, error: str | None = None) -> JobRun:
        """Note that job `name` (a timer, the webhook intake) just ran, and how."""
        from azure.data.tables import UpdateMode

        moment = self._clock()
        previous = None if error is None else self.get_run(name)
        failing_since = None
        if error is not None:
            failing_since = previous.failing_since if previous and previous.failing_since else moment
        entity: dict[str, Any] = {
            "PartitionKey": "run",
            "RowKey": _check_key(name, "job name"),
            "LastRunAt": moment,
            "Succeeded": error is None,
            "Error": (error or "")[:_CHUNK],
            "FailingSince": failing_since or "",
        }
        if error is None:
            entity["LastSuccessAt"] = moment
        # MERGE keeps LastSuccessAt of an earlier run when this one failed.
        self._table(WATERMARKS_TABLE).upsert_entity(entity, mode=UpdateMode.MERGE)
        return JobRun(
            name=name,
            last_run_at=moment,
            succeeded=error is None,
            error=error,
            last_success_at=moment if error is None else (previous.last_success_at if previous else None),
            failing_since=failing_since,
        )

    def get_run(self, name: str) -> JobRun | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table(WATERMARKS_TABLE).get_entity("run", _check_key(name, "job name"))
        except ResourceNotFoundError:
            return None
        return JobRun(
            name=name,
            last_run_at=entity["LastRunAt"],
            succeeded=bool(entity.get("Succeeded")),
            error=entity.get("Error") or None,
            last_success_at=entity.get("LastSuccessAt"),
            failing_since=entity.get("FailingSince") or None,
        )

    def list_audit(self, link_id: str, *, limit: int = 20) -> list[AuditEntry]:
        """The newest `limit` audit entries of a link, newest first."""
        if limit <= 0:
            return []
        entities = self._table(AUDIT_TABLE).query_entities(
            "PartitionKey eq @pk", parameters={"pk": _check_key(link_id, "link id")}, results_per_page=min(limit, 1000)
        )
        entries: list[AuditEntry] = []
        for entity in entities:
            entries.append(
                AuditEntry(
                    link_id=link_id,
                    time=entity["Time"],
                    direction=entity["Direction"],
                    outcome=entity["Outcome"],
                    message=entity["Message"],
                )
            )
            if len(entries) >= limit:
                break
        return entries

    # ---- dead letters --------------------------------------------------------------------------
    @staticmethod
    def _payload_key(queue: str, payload: str) -> str:
        return hashlib.sha256(f"{queue}\n{payload}".encode()).hexdigest()

    def record_failure(self, queue: str, payload: str, error: str, dequeue_count: int) -> None:
        """Remember why a message failed, so its dead letter can say so if it never succeeds."""
        from azure.data.tables import UpdateMode

        self._count_activity(self._clock(), FAILED_ATTEMPT)
        self._table(DEADLETTERS_TABLE).upsert_entity(
            {
                "PartitionKey": "lasterror",
                "RowKey": self._payload_key(queue, payload),
                "Error": error[:_CHUNK],
                "DequeueCount": dequeue_count,
                "Time": self._clock(),
            },
            mode=UpdateMode.REPLACE,
        )

    def last_failure(self, queue: str, payload: str) -> FailureNote | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table(DEADLETTERS_TABLE).get_entity("lasterror", self._payload_key(queue, payload))
        except ResourceNotFoundError:
            return None
        return FailureNote(error=str(entity["Error"]), dequeue_count=int(entity["DequeueCount"]), time=entity["Time"])

    def clear_failure(self, queue: str, payload: str) -> None:
        self._table(DEADLETTERS_TABLE).delete_entity("lasterror", self._payload_key(queue, payload))

    def record_dead_letter(
        self, *, queue: str, payload: str, dequeue_count: int, reason: str | None = None
    ) -> DeadLetter:
        """Store a message that exhausted its retries on `queue`, with the last error seen for it."""
        note = self.last_failure(queue, payload)
        explained = reason or (note.error if note else None)
        explained = explained or "no error was recorded for this message (it may have timed out or crashed the worker)"
        moment = self._clock()
        letter = DeadLetter(
            id=_inverted_time_key(moment),
            queue=queue,
            payload=payload,
            reason=explained,
            dequeue_count=max(dequeue_count, note.dequeue_count if note else 0),
            time=moment,
        )
        self._table(DEADLETTERS_TABLE).create_entity(
            {
                "PartitionKey": "deadletter",
                "RowKey": letter.id,
                "Queue": queue,
                "Payload": payload[:_CHUNK],
                "Reason": explained[:_CHUNK],
                "DequeueCount": letter.dequeue_count,
                "Time": moment,
            }
        )
        if note is not None:
            self.clear_failure(queue, payload)
        self._count_activity(moment, DEAD_LETTER)
        return letter

    def list_dead_letters(self, *, limit: int = 50) -> list[DeadLetter]:
        entities = self._table(DEADLETTERS_TABLE).query_entities(
            "PartitionKey eq 'deadletter'", results_per_page=min(max(limit, 1), 1000)
        )
        letters: list[DeadLetter] = []
        for entity in entities:
            if len(letters) >= limit:
                break
            letters.append(self._dead_letter(entity))
        return letters

    def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table(DEADLETTERS_TABLE).get_entity("deadletter", _check_key(letter_id, "dead letter id"))
        except ResourceNotFoundError:
            return None
        return self._dead_letter(entity)

    def mark_dead_letter_replayed(self, letter_id: str, *, etag: str | None = None) -> DeadLetter:
        """Mark a dead letter replayed. With `etag` (from `get_dead_letter`) only if nobody changed
        it since, so two admins replaying at once cannot both win."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        entity = {
            "PartitionKey": "deadletter",
            "RowKey": _check_key(letter_id, "dead letter id"),
            "ReplayedAt": self._clock(),
        }
        condition = MatchConditions.IfNotModified if etag else MatchConditions.Unconditionally
        try:
            self._table(DEADLETTERS_TABLE).update_entity(
                entity, mode=UpdateMode.MERGE, etag=etag, match_condition=condition
            )
        except (ResourceModifiedError, ResourceNotFoundError) as error:
            raise ConcurrencyConflictError(f"dead letter {letter_id} changed since it was read") from error
        marked = self.get_dead_letter(letter_id)
        if marked is None:
            raise ConcurrencyConflictError(f"dead letter {letter_id} was deleted meanwhile")
        return marked

    def unmark_dead_letter_replayed(self, letter: DeadLetter) -> None:
        """Undo `mark_dead_letter_replayed` when the message could not be put back on its queue."""
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        entity = self._table(DEADLETTERS_TABLE).get_entity("deadletter", _check_key(letter.id, "dead letter id"))
        restored = {key: value for key, value in entity.items() if key != "ReplayedAt"}
        self._table(DEADLETTERS_TABLE).update_entity(
            restored, mode=UpdateMode.REPLACE, etag=letter.etag, match_condition=MatchConditions.IfNotModified
        )

    def count_dead_letters(self, *, include_replayed: bool = False) -> int:
        query = "PartitionKey eq 'deadletter'"
        entities = self._table(DEADLETTERS_TABLE).query_entities(query, select=["RowKey", "ReplayedAt"])
        return sum(1 for entity in entities if include_replayed or not entity.get("ReplayedAt"))

    @staticmethod
    def _dead_letter(entity: Any) -> DeadLetter:
        return DeadLetter(
            id=entity["RowKey"],
            queue=entity["Queue"],
            payload=entity["Payload"],
            reason=entity["Reason"],
            dequeue_count=int(entity["DequeueCount"]),
            time=entity["Time"],
            replayed_at=entity.get("ReplayedAt"),
            etag=_etag_of(entity),
        )
