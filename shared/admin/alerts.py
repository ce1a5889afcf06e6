"""Alerts: what needs an admin now, decided once from the status snapshot, sent without repeats.

`evaluate()` turns a `StatusSnapshot` into alerts; the status page shows the same list at the top,
so the page and the messages never disagree. `AlertRun` (the timer) sends them to every configured
channel (shared/admin/alert_channels.py) with these rules:

- A *condition* (Partner Center sign-in, MFA, CRM sign-in, a poll or push notifications gone quiet)
  is sent when it starts and again at most once an hour while it lasts: it blocks every sync.
- An *item* (a record in error, a dead letter, a referral about to expire) is sent once, when it
  first appears; while it stays open it is listed in the daily digest instead of repeating.
- At most `IMMEDIATE_LIMIT` messages per run; the rest of that run go out as one summary.
- A daily digest (at `ALERT_DIGEST_HOUR` UTC) lists everything still open.

Sending never raises into a sync: the timer is its own function, each channel's failure is logged
and recorded as the run's error (shown on the status page), and a cause is marked as sent only
when at least one channel took it, so a failed send is retried at the next run.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shared.admin.status import StatusSnapshot, sign_in_problem
from shared.crm.port import CrmAuthError
from shared.ncrontab import Schedule
from shared.settings import Settings
from shared.sync import runs
from shared.sync.storage import StorageAccount

log = logging.getLogger(__name__)

ALERTS_TABLE = "alerts"
REPEAT_CONDITION_AFTER = dt.timedelta(hours=1)
IMMEDIATE_LIMIT = 5

AlertKind = Literal[
    "record_error",
    "dead_letter",
    "pc_sign_in",
    "pc_mfa",
    "crm_auth",
    "no_poll",
    "no_push",
    "referral_expiring",
]
CONDITIONS: frozenset[AlertKind] = frozenset({"pc_sign_in", "pc_mfa", "crm_auth", "no_poll", "no_push"})
KIND_TITLES: dict[AlertKind, str] = {
    "record_error": "Records in error",
    "dead_letter": "Dead letters",
    "pc_sign_in": "Partner Center sign-in",
    "pc_mfa": "Partner Center sign-in without MFA",
    "crm_auth": "CRM sign-in",
    "no_poll": "Polls not running",
    "no_push": "No push notifications",
    "referral_expiring": "Referrals about to expire",
}


@dataclass(frozen=True)
class Alert:
    """One cause: what happened, why, and the one thing to do about it."""

    kind: AlertKind
    cause: str
    title: str
    why: str
    action: str

    @property
    def is_condition(self) -> bool:
        return self.kind in CONDITIONS


def _schedule_interval(expression: str, now: dt.datetime) -> dt.timedelta:
    schedule = Schedule.parse(expression)
    first = schedule.next_after(now)
    return schedule.next_after(first) - first


def _minutes(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def evaluate(snapshot: StatusSnapshot, settings: Settings) -> list[Alert]:
    """Every alert the snapshot calls for, conditions first."""
    now = snapshot.generated_at
    alerts: list[Alert] = []
    sign_in = snapshot.pc_sign_in
    if sign_in.get("signed_in") and sign_in.get("mfa") is False:
        alerts.append(
            Alert(
                "pc_mfa",
                "pc-mfa",
                f"The Partner Center sign-in ({sign_in.get('account')}) did not use multifactor authentication",
                str(sign_in.get("mfa_problem") or "Partner Center refuses user calls from a sign-in without MFA."),
                "Run python -m shared partner-center login again as the Referrals Admin, completing MFA.",
            )
        )
    elif not sign_in.get("healthy"):
        alerts.append(
            Alert(
                "pc_sign_in",
                "pc-sign-in",
                "The Partner Center sign-in is not working",
                sign_in_problem(sign_in) or "the stored sign-in could not be used",
                "Run python -m shared partner-center login as the Referrals Admin (docs/partner-center.md).",
            )
        )
    crm_error = snapshot.crm_error
    if crm_error and crm_error.startswith(f"{CrmAuthError.__name__}:"):
        alerts.append(
            Alert(
                "crm_auth",
                "crm-auth",
                f"Co-sell Sync cannot sign in to {snapshot.crm_kind}",
                crm_error,
                f"Check the {snapshot.crm_kind} integration user and its secret (docs/{snapshot.crm_kind}.md), then "
                "watch the next CRM poll succeed on the status page.",
            )
        )
    # A CRM sign-in failure also stops the CRM poll: one alert for one cause.
    covered = {runs.CRM_POLL} if any(alert.kind == "crm_auth" for alert in alerts) else set()
    alerts += _quiet_jobs(snapshot, settings, now, covered)
    for view in snapshot.errors.value or []:
        link = view.link
        subject = view.name or link.referral_id or link.crm_id or link.link_id
        alerts.append(
            Alert(
                "record_error",
                f"record-error:{link.link_id}",
                f"Sync of '{subject}' failed",
                link.last_error or "the last sync of this record failed",
                "Correct what the error names in the CRM record (or in Partner Center); the next change syncs it. "
                "The status page search shows its full audit trail.",
            )
        )
    for item in snapshot.dead_letters.value or []:
        alerts.append(
            Alert(
                "dead_letter",
                f"dead-letter:{item.letter.id}",
                f"A sync of {item.subject} failed and was set aside"
                + (f" after {item.letter.dequeue_count} attempts" if item.letter.dequeue_count > 1 else ""),
                item.letter.reason,
                "Fix the cause, then press Replay on the status page "
                f"(or run: python -m shared dead-letters replay {item.letter.id}).",
            )
        )
    for referral in snapshot.waiting.value or []:
        days = referral.days_left(now)
        if days < settings.alert_expiry_days:
            left = "has expired" if days <= 0 else f"expires in {days:.1f} days"
            alerts.append(
                Alert(
                    "referral_expiring",
                    f"referral-expiring:{referral.referral_id}",
                    f"Inbound referral '{referral.name}' ({referral.customer or 'customer unknown'}) {left}",
                    f"Microsoft shared it on {referral.created_at:%Y-%m-%d} and nobody has accepted or declined it; "
                    "Partner Center closes unanswered inbound referrals 14 days after creation."
                    if referral.created_at
                    else "Nobody has accepted or declined it yet.",
                    f"Accept or decline it in the CRM record or in Partner Center: {referral.pc_url}",
                )
            )
    return alerts


def _quiet_jobs(snapshot: StatusSnapshot, settings: Settings, now: dt.datetime, covered: set[str]) -> list[Alert]:
    alerts: list[Alert] = []
    polls = {
        runs.CRM_POLL: ("The CRM poll", settings.crm_poll_schedule, "CRM_POLL_SCHEDULE"),
        runs.PC_RECONCILE: (
            "The Partner Center reconcile poll",
            settings.pc_reconcile_schedule,
            "PC_RECONCILE_SCHEDULE",
        ),
    }
    for job in snapshot.jobs.value or []:
        if job.run is None or job.name in covered:
            continue  # never ran here yet (a fresh install): nothing has stopped
        age = job.age(now)
        if job.name in polls:
            label, schedule, setting = polls[job.name]
            # A slow schedule cannot be late before two of its own intervals have passed.
            limit = max(dt.timedelta(minutes=settings.alert_no_poll_minutes), 2 * _schedule_interval(schedule, now))
            if age is not None and age > limit:
                alerts.append(
                    Alert(
                        "no_poll",
                        f"no-poll:{job.name}",
                        f"{label} has not succeeded for {_minutes(age)}",
                        job.run.error or f"it last ran at {job.run.last_run_at:%Y-%m-%d %H:%M} UTC",
                        f"Check that the Function app is running and its {setting} timer fires; the error above "
                        "says what stops it.",
                    )
                )
        elif (
            job.name == runs.PC_WEBHOOK
            and settings.alert_no_webhook_hours
            and age is not None
            and age > dt.timedelta(hours=settings.alert_no_webhook_hours)
        ):
            alerts.append(
                Alert(
                    "no_push",
                    "no-push",
                    f"No Partner Center push notification for {_minutes(age)}",
                    "Partner Center may have dropped our webhook registration, or its calls fail before they reach us "
                    "(the reconcile poll still catches changes, but minutes later).",
                    "Run python -m shared partner-center register-webhook --url <events URL> --send-test.",
                )
            )
    return alerts


# ---- sending with deduplication -----------------------------------------------------------------------
Sender = Callable[[str, Sequence[Alert], str | None], list[str]]
"""(subject, alerts, status page URL) -> the errors of the channels that failed (empty = all took it)."""


class AlertLedger:
    """What was sent when (table `alerts`): `sent` rows by cause, one `digest` row."""

    def __init__(self, storage: StorageAccount) -> None:
        self._storage = storage
        self._client: Any = None

    def _table(self) -> Any:
        if self._client is None:
            client = self._storage.table_client(ALERTS_TABLE)
            self._storage.ensure_table(client)
            self._client = client
        return self._client

    @staticmethod
    def _key(cause: str) -> str:
        return "".join("_" if ch in "/\\#?" or ord(ch) < 32 else ch for ch in cause)[:500]

    def sent(self) -> dict[str, dt.datetime]:
        return {
            str(entity["Cause"]): entity["LastSentAt"]
            for entity in self._table().query_entities("PartitionKey eq 'sent'")
        }

    def mark_sent(self, alert: Alert, moment: dt.datetime) -> None:
        from azure.data.tables import UpdateMode

        self._table().upsert_entity(
            {
                "PartitionKey": "sent",
                "RowKey": self._key(alert.cause),
                "Cause": alert.cause,
                "Kind": alert.kind,
                "LastSentAt": moment,
            },
            mode=UpdateMode.REPLACE,
        )

    def forget(self, cause: str) -> None:
        self._table().delete_entity("sent", self._key(cause))

    def last_digest(self) -> dt.date | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table().get_entity("digest", "last")
        except ResourceNotFoundError:
            return None
        return dt.date.fromisoformat(str(entity["Date"]))

    def mark_digest(self, day: dt.date) -> None:
        from azure.data.tables import UpdateMode

        self._table().upsert_entity(
            {"PartitionKey": "digest", "RowKey": "last", "Date": day.isoformat()}, mode=UpdateMode.REPLACE
        )


@dataclass
class RunResult:
    sent: list[Alert]
    digest: bool
    errors: list[str]


def send_due(
    alerts: Sequence[Alert],
    ledger: AlertLedger,
    sender: Sender,
    *,
    now: dt.datetime,
    digest_hour: int,
    page_url: str | None,
) -> RunResult:
    """Send what is due under the deduplication rules above; returns what went out."""
    sent_before = ledger.sent()
    open_causes = {alert.cause for alert in alerts}
    for cause in set(sent_before) - open_causes:
        ledger.forget(cause)  # resolved: if it comes back, it is news again
    due = [
        alert
        for alert in alerts
        if alert.cause not in sent_before
        or (alert.is_condition and now - sent_before[alert.cause] >= REPEAT_CONDITION_AFTER)
    ]
    errors: list[str] = []
    delivered: list[Alert] = []
    for alert in due[:IMMEDIATE_LIMIT]:
        failures = sender(alert.title, [alert], page_url)
        errors += failures
        if _taken(failures, sender):
            ledger.mark_sent(alert, now)
            delivered.append(alert)
    rest = due[IMMEDIATE_LIMIT:]
    if rest:
        failures = sender(f"{_problems(len(rest), 'more ')} need attention", rest, page_url)
        errors += failures
        if _taken(failures, sender):
            for alert in rest:
                ledger.mark_sent(alert, now)
            delivered += rest
    digest = False
    today = now.date()
    already_alerted = [alert for alert in alerts if alert not in due]
    if already_alerted and now.hour >= digest_hour and ledger.last_digest() != today:
        failures = sender(f"Daily digest: {_problems(len(already_alerted))} still open", already_alerted, page_url)
        errors += failures
        if _taken(failures, sender):
            ledger.mark_digest(today)
            digest = True
    return RunResult(delivered, digest, errors)


def _problems(count: int, qualifier: str = "") -> str:
    return f"{count} {qualifier}problem" + ("" if count == 1 else "s")


def _taken(failures: list[str], sender: Sender) -> bool:
    channels = getattr(sender, "channel_count", 1)
    return len(failures) < channels


class AlertsNotSent(Exception):
    """At least one channel refused an alert; the message names each (never a webhook URL)."""


def run(settings: Settings, snapshot: StatusSnapshot, ledger: AlertLedger, sender: Sender) -> RunResult:
    """The timer's job: evaluate, send what is due; raise `AlertsNotSent` when a channel failed,
    so the run is recorded as failed on the status page (what did go out stays sent)."""
    result = send_due(
        evaluate(snapshot, settings),
        ledger,
        sender,
        now=snapshot.generated_at,
        digest_hour=settings.alert_digest_hour,
        page_url=settings.status_page_url,
    )
    if result.errors:
        raise AlertsNotSent("; ".join(result.errors))
    return result
