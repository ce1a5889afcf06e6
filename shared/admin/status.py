"""Everything the status page shows (and the alerts judge), gathered in one place.

Built on what exists: the health report (settings, storage, queues, the Partner Center sign-in),
the state store (links, audit, dead letters, activity, job runs) and the Partner Center client
(inbound referrals waiting for a response). Each part is read on its own and a failure of one
becomes that part's error, never the page's: the page must work best exactly when things break.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from shared.settings import Settings
from shared.sync import runs
from shared.sync.queues import SYNC_POISON_QUEUE, SYNC_QUEUE, QueueProducer
from shared.sync.state import AuditEntry, DeadLetter, JobRun, Link, StateStore, link_id_for_crm, link_id_for_referral

log = logging.getLogger(__name__)
Value = TypeVar("Value")

INBOUND_WAITING_FILTER = "direction eq 'Incoming' and status eq 'New'"
"""Partner Center's inbound referrals still waiting for an answer (a documented `$filter`)."""
INBOUND_MAX_AGE = dt.timedelta(seconds=60)
"""How long the list of waiting referrals is reused: a page open all day must not spend Partner
Center's request quota on a list that changes a few times a day."""
INBOUND_LIFETIME = dt.timedelta(days=14)
"""Inbound referrals expire this long after creation when Partner Center gives no expirationDateTime."""
SEARCH_LIMIT = 20
RECENT_ERRORS_LIMIT = 25
DEAD_LETTERS_LIMIT = 50
# Timers the page shows, in this order, with the words an admin knows them by.
JOBS: tuple[tuple[str, str], ...] = (
    (runs.PC_WEBHOOK, "Partner Center push notification received"),
    (runs.CRM_POLL, "CRM poll"),
    (runs.PC_RECONCILE, "Partner Center reconcile"),
    (runs.PC_TOKEN_REFRESH, "Partner Center sign-in refresh"),
    (runs.ALERTS, "Alerts evaluated"),
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Part(Generic[Value]):
    """One part of the page: its value, or why it could not be read."""

    value: Value | None = None
    error: str | None = None


def _read(what: str, reader: Callable[[], Value]) -> Part[Value]:
    try:
        return Part(value=reader())
    except Exception as error:  # shown on the page in plain words; the rest of the page still works
        log.warning("status page: could not read %s: %s", what, error)
        return Part(error=f"could not read {what}: {type(error).__name__}: {error}")


class RecentValue(Generic[Value]):
    """`load()`'s value, loaded again only when older than `max_age`; a failed load is not kept."""

    def __init__(
        self, load: Callable[[], Value], max_age: dt.timedelta, clock: Callable[[], dt.datetime] = _now
    ) -> None:
        self._load = load
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded: tuple[dt.datetime, Value] | None = None

    def get(self) -> Value:
        with self._lock:
            now = self._clock()
            if self._loaded is None or now - self._loaded[0] > self._max_age:
                self._loaded = (now, self._load())
            return self._loaded[1]


@dataclass
class Connection:
    name: str
    healthy: bool
    facts: list[tuple[str, str]]
    error: str | None = None


@dataclass
class JobStatus:
    name: str
    label: str
    run: JobRun | None

    def age(self, now: dt.datetime) -> dt.timedelta | None:
        """How long since the job was last known to work (None: it never ran here)."""
        moment = self.run.healthy_at if self.run else None
        return now - moment if moment else None


@dataclass
class LinkView:
    """A link as the page shows it: ids, plain-words state and where to open each side."""

    link: Link
    name: str | None
    crm_url: str | None
    pc_url: str | None


@dataclass
class DeadLetterView:
    letter: DeadLetter
    subject: str


@dataclass
class WaitingReferral:
    referral_id: str
    name: str
    customer: str
    created_at: dt.datetime | None
    expires_at: dt.datetime
    pc_url: str

    def days_left(self, now: dt.datetime) -> float:
        return (self.expires_at - now).total_seconds() / 86400


@dataclass
class SearchResult:
    query: str
    links: list[LinkView]
    audit: dict[str, list[AuditEntry]] = field(default_factory=dict)

    def conflicts(self, link_id: str) -> list[AuditEntry]:
        return [entry for entry in self.audit.get(link_id, []) if entry.outcome == "conflict"]


@dataclass
class StatusSnapshot:
    generated_at: dt.datetime
    crm_kind: str
    pc_sign_in: dict[str, Any] = field(repr=False)
    """The Partner Center sign-in health summary (account, multifactor, healthy, errors)."""
    crm_error: str | None
    """Why the last CRM poll failed ("<error type>: <message>"), None when it worked or never ran."""
    connections: list[Connection]
    jobs: Part[list[JobStatus]]
    queues: Part[dict[str, int]]
    outcomes_hour: Part[dict[str, int]]
    outcomes_day: Part[dict[str, int]]
    errors: Part[list[LinkView]]
    dead_letters: Part[list[DeadLetterView]]
    waiting: Part[list[WaitingReferral]]
    search: Part[SearchResult] | None = None

    @property
    def healthy(self) -> bool:
        return all(connection.healthy for connection in self.connections)


# ---- links to the two systems -------------------------------------------------------------------------
def crm_record_url(settings: Settings, kind: str | None, record_id: str | None) -> str | None:
    if not kind or not record_id:
        return None
    if settings.crm_kind == "dynamics":
        from shared.crm.dynamics import record_url as dynamics_url

        return dynamics_url(settings, kind, record_id)
    from shared.crm.salesforce import record_url as salesforce_url

    return salesforce_url(settings, kind, record_id)


def referral_url(settings: Settings, referral_id: str | None, engagement_id: str | None = None) -> str | None:
    if not referral_id:
        return None
    return settings.pc_referral_link_template.format(id=referral_id, engagement_id=engagement_id or "")


def _name_of(link: Link) -> str | None:
    """The deal's name as last synced (the snapshot holds each side's view)."""
    views = [link.snapshot, *(value for value in link.snapshot.values() if isinstance(value, dict))]
    for view in views:
        name = view.get("name")
        if isinstance(name, str) and name:
            return name
    return None


def view_of(settings: Settings, link: Link) -> LinkView:
    return LinkView(
        link=link,
        name=_name_of(link),
        crm_url=crm_record_url(settings, link.crm_object, link.crm_id),
        pc_url=referral_url(settings, link.referral_id),
    )


def describe_payload(payload: str) -> str:
    """A dead letter's subject in words: which referral or CRM record it was about."""
    try:
        body = json.loads(payload)
    except ValueError:
        return "a message that is not JSON"
    if not isinstance(body, dict):
        return "a message that is not a JSON object"
    if body.get("referral_id"):
        return f"Partner Center referral {body['referral_id']} ({body.get('event') or 'change'})"
    if body.get("record_id"):
        return f"CRM {body.get('object') or 'record'} {body['record_id']}"
    return "a message without a referral or record id"


def sign_in_problem(summary: dict[str, Any]) -> str | None:
    """What is wrong with the Partner Center sign-in, in words (None: nothing)."""
    error = summary.get("last_refresh_error") or summary.get("error")
    if not summary.get("signed_in"):
        return str(error or "no Partner Center sign-in is stored: run python -m shared partner-center login")
    if summary.get("mfa") is False:
        return str(error or summary.get("mfa_problem") or "the sign-in carries no MFA claim")
    return str(error) if error else None


# ---- the parts ------------------------------------------------------------------------------------------
def _connections(
    settings: Settings, state: StateStore, pc_sign_in: dict[str, Any], now: dt.datetime
) -> tuple[list[Connection], str | None]:
    pc_facts = [("account", str(pc_sign_in.get("account") or "not signed in"))]
    mfa = pc_sign_in.get("mfa")
    pc_facts.append(("MFA", "yes" if mfa else "no" if mfa is False else "unknown"))
    if pc_sign_in.get("signed_in_at"):
        pc_facts.append(("signed in", str(pc_sign_in["signed_in_at"])))
    last_used = pc_sign_in.get("refresh_token_last_used_at")
    if last_used:
        pc_facts.append(("refresh token last used", f"{last_used} ({_age_text(str(last_used), now)})"))
    connections = [
        Connection("Partner Center sign-in", bool(pc_sign_in.get("healthy")), pc_facts, sign_in_problem(pc_sign_in))
    ]

    poll = _read("the CRM poll", lambda: state.get_run(runs.CRM_POLL))
    poll_run = poll.value
    crm_error = poll.error or (poll_run.error if poll_run and not poll_run.succeeded else None)
    crm_facts: list[tuple[str, str]] = [("CRM", str(settings.crm_kind))]
    if poll_run and poll_run.last_success_at:
        crm_facts.append(("last successful call", f"{poll_run.last_success_at:%Y-%m-%d %H:%M:%S} UTC"))
    connections.append(Connection(f"CRM ({settings.crm_kind})", crm_error is None, crm_facts, crm_error))
    return connections, crm_error


def age(moment: dt.datetime | None, now: dt.datetime) -> str:
    """'3 min ago', in words for the page."""
    if moment is None:
        return "never"
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 90:
        return f"{seconds} s ago"
    if seconds < 5400:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def _age_text(moment: str, now: dt.datetime) -> str:
    try:
        when = dt.datetime.fromisoformat(moment)
    except ValueError:
        return "age unknown"
    return age(when if when.tzinfo else when.replace(tzinfo=dt.UTC), now)


def _errors(settings: Settings, state: StateStore) -> list[LinkView]:
    failing = [link for link in state.list_links() if link.state == "error" or link.last_error]
    failing.sort(key=lambda link: link.updated_at, reverse=True)
    return [view_of(settings, link) for link in failing[:RECENT_ERRORS_LIMIT]]


def open_dead_letters(state: StateStore) -> list[DeadLetterView]:
    letters = [letter for letter in state.list_dead_letters(limit=DEAD_LETTERS_LIMIT) if letter.replayed_at is None]
    return [DeadLetterView(letter, describe_payload(letter.payload)) for letter in letters]


def waiting_referrals(settings: Settings, referrals: Iterable[Any]) -> list[WaitingReferral]:
    """Inbound referrals still waiting for the partner's answer, soonest to expire first."""
    waiting: list[WaitingReferral] = []
    for referral in referrals:
        if not referral.id or referral.status != "New" or referral.direction != "Incoming":
            continue
        created = referral.created_date_time
        expires = referral.expiration_date_time or (created + INBOUND_LIFETIME if created else None)
        if expires is None:
            continue
        profile = referral.customer_profile
        waiting.append(
            WaitingReferral(
                referral_id=referral.id,
                name=referral.name or "(no name)",
                customer=(profile.name if profile and profile.name else "") or "",
                created_at=created,
                expires_at=expires,
                pc_url=referral_url(settings, referral.id, referral.engagement_id) or "",
            )
        )
    waiting.sort(key=lambda item: item.expires_at)
    return waiting


def search(settings: Settings, state: StateStore, query: str) -> SearchResult:
    """Links whose referral id, CRM id, link id or name matches `query`, each with its audit trail.

    Ids are looked up exactly through the store's indexes (bound parameters, never pasted into a
    filter); names match case-insensitively anywhere in the deal name."""
    text = query.strip()[:200]
    found: dict[str, Link] = {}

    def keep(link: Link | None) -> None:
        if link is not None:
            found.setdefault(link.link_id, link)

    if text:
        exact: list[Callable[[], Link | None]] = [
            lambda: state.get_link(text),
            lambda: state.find_link_by_referral(text),
            lambda: state.find_link_by_crm("opportunity", text),
            lambda: state.find_link_by_crm("lead", text),
            lambda: state.get_link(link_id_for_referral(text)),
            lambda: state.get_link(link_id_for_crm("opportunity", text)),
        ]
        for lookup in exact:
            try:
                keep(lookup())
            except ValueError:  # not usable as a table key (e.g. contains '/'): only the name search applies
                continue
        needle = text.casefold()
        for link in state.list_links():
            if len(found) >= SEARCH_LIMIT:
                break
            name = _name_of(link)
            if name and needle in name.casefold():
                keep(link)
    views = [view_of(settings, link) for link in list(found.values())[:SEARCH_LIMIT]]
    audit = {view.link.link_id: state.list_audit(view.link.link_id, limit=50) for view in views}
    return SearchResult(query=text, links=views, audit=audit)


def gather(
    settings: Settings,
    state: StateStore,
    queues: QueueProducer,
    *,
    pc_sign_in: Callable[[], dict[str, Any]],
    inbound_referrals: Callable[[], Iterable[Any]],
    query: str | None = None,
    now: dt.datetime | None = None,
) -> StatusSnapshot:
    """Read every part of the page. `pc_sign_in` is the sign-in health summary; `inbound_referrals`
    lists Partner Center's inbound referrals still New (both injected, so tests and the alerts share it)."""
    moment = now or _now()
    sign_in = _read("the Partner Center sign-in", pc_sign_in)
    summary = sign_in.value or {"signed_in": False, "healthy": False, "error": sign_in.error}
    connections, crm_error = _connections(settings, state, summary, moment)
    storage = _read(
        "storage", lambda: {SYNC_QUEUE: queues.depth(SYNC_QUEUE), SYNC_POISON_QUEUE: queues.depth(SYNC_POISON_QUEUE)}
    )
    connections.append(
        Connection(
            "Storage",
            storage.error is None,
            [("tables and queues", "reachable" if storage.error is None else "unreachable")],
            storage.error,
        )
    )
    return StatusSnapshot(
        generated_at=moment,
        crm_kind=settings.crm_kind,
        pc_sign_in=summary,
        crm_error=crm_error,
        connections=connections,
        jobs=_read("job runs", lambda: [JobStatus(name, label, state.get_run(name)) for name, label in JOBS]),
        queues=storage,
        outcomes_hour=_read(
            "syncs of the last hour", lambda: state.count_outcomes(moment - dt.timedelta(hours=1), until=moment)
        ),
        outcomes_day=_read(
            "syncs of the last day", lambda: state.count_outcomes(moment - dt.timedelta(days=1), until=moment)
        ),
        errors=_read("links in error", lambda: _errors(settings, state)),
        dead_letters=_read("dead letters", lambda: open_dead_letters(state)),
        waiting=_read(
            "inbound referrals from Partner Center", lambda: waiting_referrals(settings, inbound_referrals())
        ),
        search=_read("the search", lambda: search(settings, state, query)) if query and query.strip() else None,
    )
