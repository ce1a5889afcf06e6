"""Alerts to Teams, Slack and email, for real: a local HTTP sink stands in for the two incoming
webhooks and aiosmtpd for the mail server; state is a private Azurite, emptied before each test.

The sign-in summary and the inbound referrals are given to `status.gather` directly (their real
sources are tested in tests/partner_center and the browser test); everything else is the real
state store, the real channels and the real deduplication ledger.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

import function_app
from sandbox.azurite import Azurite
from sandbox.host import LocalHost, functions_of
from sandbox.tls import ensure_ca, issue_certificate
from shared import bootstrap
from shared.admin import alerts, status
from shared.admin.alert_channels import AlertChannels
from shared.model.referral import Referral
from shared.settings import Settings, load_settings
from shared.sync import runs
from shared.sync.queues import QueueProducer
from shared.sync.state import Link, StateStore, link_id_for_referral
from shared.sync.storage import StorageAccount
from tests.conftest import base_environment, running_azurite
from tests.waiting import wait_until

pytestmark = [pytest.mark.azurite]

PAGE_URL = "http://127.0.0.1:7071/api/status"
HEALTHY_SIGN_IN = {"signed_in": True, "account": "admin@contoso.com", "mfa": True, "healthy": True}


# ---- the two local servers --------------------------------------------------------------------------
@dataclass
class WebhookSink:
    """Records every POST by path; `failing` paths answer 500 like a webhook that was deleted."""

    url: str
    received: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.received.get(path, []))

    def clear(self) -> None:
        with self.lock:
            self.received.clear()
            self.failing.clear()


@pytest.fixture(scope="module")
def sink() -> Iterator[WebhookSink]:
    recorder: WebhookSink

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            with recorder.lock:
                fail = self.path in recorder.failing
                if not fail:
                    recorder.received.setdefault(self.path, []).append(body)
            self.send_response(500 if fail else 200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no" if fail else b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorder = WebhookSink(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield recorder
    server.shutdown()
    server.server_close()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            parsed = message_from_bytes(envelope.content, policy=policy.default)
            assert isinstance(parsed, EmailMessage)
            self.messages.append(parsed)
        return "250 Message accepted for delivery"

    def all(self) -> list[EmailMessage]:
        with self.lock:
            return list(self.messages)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = _free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, port
    controller.stop()


@pytest.fixture(scope="module")
def private_azurite() -> Iterator[Azurite]:
    yield from running_azurite()


@pytest.fixture
def storage(private_azurite: Azurite) -> StorageAccount:
    """An empty account for each test: alerts are about everything in it."""
    from azure.data.tables import TableServiceClient

    service = TableServiceClient.from_connection_string(private_azurite.connection_string)
    for table in list(service.list_tables()):
        service.delete_table(table.name)
    return StorageAccount(connection_string=private_azurite.connection_string)


def alert_environment(connection: str, sink: WebhookSink, smtp_port: int, **overrides: str) -> dict[str, str]:
    alert_settings = {
        "ALERT_TEAMS_WEBHOOK_URL": f"{sink.url}/teams",
        "ALERT_SLACK_WEBHOOK_URL": f"{sink.url}/slack",
        "ALERT_SMTP_HOST": "127.0.0.1",
        "ALERT_SMTP_PORT": str(smtp_port),
        "ALERT_SMTP_SECURITY": "none",
        "ALERT_EMAIL_FROM": "cosell-sync@contoso.com",
        "ALERT_EMAIL_TO": "partner-ops@contoso.com, crm-admins@contoso.com",
        "STATUS_PAGE_URL": PAGE_URL,
        "ALERT_DIGEST_HOUR": "0",
    }
    return base_environment(connection, **{**alert_settings, **overrides})


@dataclass
class World:
    settings: Settings
    state: StateStore
    storage: StorageAccount
    connection: str
    sink: WebhookSink
    mailbox: Mailbox
    sign_in: dict[str, Any] = field(default_factory=lambda: dict(HEALTHY_SIGN_IN))
    referrals: list[Referral] = field(default_factory=list)

    def snapshot(self, now: dt.datetime | None = None) -> status.StatusSnapshot:
        return status.gather(
            self.settings,
            self.state,
            QueueProducer(self.storage),
            pc_sign_in=lambda: self.sign_in,
            inbound_referrals=lambda: self.referrals,
            now=now,
        )

    def run(self, now: dt.datetime | None = None) -> alerts.RunResult:
        return alerts.run(
            self.settings, self.snapshot(now), alerts.AlertLedger(self.storage), AlertChannels(self.settings)
        )

    def teams_texts(self) -> list[str]:
        return [json.dumps(body) for body in self.sink.bodies("/teams")]

    def slack_texts(self) -> list[str]:
        return [str(body["text"]) for body in self.sink.bodies("/slack")]

    def emails(self) -> list[EmailMessage]:
        return self.mailbox.all()


@pytest.fixture
def world(
    storage: StorageAccount, sink: WebhookSink, smtp: tuple[Mailbox, int], private_azurite: Azurite
) -> Iterator[World]:
    mailbox, port = smtp
    sink.clear()
    mailbox.messages.clear()
    connection = private_azurite.connection_string
    settings = load_settings(alert_environment(connection, sink, port))
    yield World(settings, StateStore(storage), storage, connection, sink, mailbox)


# ---- one arrangement per alert kind ------------------------------------------------------------------
def _record_error(world: World) -> tuple[str, str]:
    referral_id = str(uuid.uuid4())
    world.state.create_link(
        Link(
            link_id=link_id_for_referral(referral_id),
            referral_id=referral_id,
            crm_object="opportunity",
            crm_id="006000000000001AAA",
            state="error",
            snapshot={"pc": {"name": "Contoso - Azure migration"}},
            last_error="Salesforce refused the record: FIELD_CUSTOM_VALIDATION_EXCEPTION Close Date is required",
        )
    )
    return "Sync of 'Contoso - Azure migration' failed", "FIELD_CUSTOM_VALIDATION_EXCEPTION"


def _dead_letter(world: World) -> tuple[str, str]:
    payload = json.dumps({"source": "pc", "referral_id": "ref-42", "event": "referral-updated"})
    world.state.record_dead_letter(queue="sync", payload=payload, dequeue_count=5, reason="HTTP 503 from Dataverse")
    return (
        "A sync of Partner Center referral ref-42 (referral-updated) failed and was set aside after 5 attempts",
        "HTTP 503",
    )


def _pc_sign_in(world: World) -> tuple[str, str]:
    world.sign_in = {
        "signed_in": True,
        "account": "admin@contoso.com",
        "mfa": True,
        "healthy": False,
        "last_refresh_error": "invalid_grant: AADSTS700082: The refresh token has expired due to inactivity",
    }
    return "The Partner Center sign-in is not working", "AADSTS700082"


def _pc_mfa(world: World) -> tuple[str, str]:
    world.sign_in = {
        "signed_in": True,
        "account": "admin@contoso.com",
        "mfa": False,
        "mfa_problem": "the Partner Center sign-in carries no MFA claim (error 900421)",
        "healthy": False,
    }
    return "did not use multifactor authentication", "error 900421"


def _crm_auth(world: World) -> tuple[str, str]:
    world.state.record_run(runs.CRM_POLL, error="CrmAuthError: Salesforce refused a fresh session (INVALID_SESSION_ID)")
    return "cannot sign in to salesforce", "INVALID_SESSION_ID"


def _no_poll(world: World) -> tuple[str, str]:
    world.state.record_run(runs.CRM_POLL)
    return "The CRM poll has not succeeded for 20 min", "it last ran at"


def _no_push(world: World) -> tuple[str, str]:
    world.state.record_run(runs.PC_WEBHOOK)
    return "No Partner Center push notification for", "dropped our webhook registration"


def _referral_expiring(world: World) -> tuple[str, str]:
    created = dt.datetime.now(dt.UTC) - dt.timedelta(days=12)
    world.referrals = [
        Referral.model_validate(
            {
                "id": "ref-expiring",
                "name": "Northwind - Copilot rollout",
                "status": "New",
                "substatus": "Pending",
                "direction": "Incoming",
                "createdDateTime": created.isoformat(),
                "expirationDateTime": (created + dt.timedelta(days=14)).isoformat(),
                "customerProfile": {"name": "Northwind Traders"},
            }
        )
    ]
    return "Inbound referral 'Northwind - Copilot rollout' (Northwind Traders) expires in 2.0 days", "14 days"


ARRANGEMENTS: dict[str, tuple[Callable[[World], tuple[str, str]], dt.timedelta]] = {
    "record_error": (_record_error, dt.timedelta()),
    "dead_letter": (_dead_letter, dt.timedelta()),
    "pc_sign_in": (_pc_sign_in, dt.timedelta()),
    "pc_mfa": (_pc_mfa, dt.timedelta()),
    "crm_auth": (_crm_auth, dt.timedelta()),
    "no_poll": (_no_poll, dt.timedelta(minutes=20, seconds=30)),
    "no_push": (_no_push, dt.timedelta(hours=25)),
    "referral_expiring": (_referral_expiring, dt.timedelta()),
}


def test_every_alert_kind_is_covered() -> None:
    assert set(ARRANGEMENTS) == set(alerts.KIND_TITLES)


@pytest.mark.parametrize("kind", sorted(ARRANGEMENTS))
def test_each_alert_kind_reaches_teams_slack_and_email(world: World, kind: str) -> None:
    arrange, later = ARRANGEMENTS[kind]
    title, why = arrange(world)
    result = world.run(dt.datetime.now(dt.UTC) + later)
    assert [alert.kind for alert in result.sent] == [kind]

    (teams,) = world.sink.bodies("/teams")
    card = teams["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["actions"][0]["url"] == PAGE_URL
    assert title in json.dumps(card) and why in json.dumps(card)
    (slack,) = world.sink.bodies("/slack")
    assert title in slack["text"] and why in slack["text"] and "What to do:" in slack["text"]
    assert f"<{PAGE_URL}|Open the status page>" in json.dumps(slack["blocks"])
    (email,) = world.emails()
    assert email["To"] == "partner-ops@contoso.com, crm-admins@contoso.com"
    assert title in email["Subject"]
    body = str(email.get_content())
    assert why in body and "What to do:" in body and PAGE_URL in body


def test_a_healthy_system_sends_nothing(world: World) -> None:
    world.state.record_run(runs.CRM_POLL)
    world.state.record_run(runs.PC_WEBHOOK)
    result = world.run()
    assert result.sent == [] and not result.digest
    assert world.sink.bodies("/teams") == [] and world.emails() == []


def test_one_message_per_cause_per_hour_and_a_daily_digest_for_the_rest(world: World) -> None:
    _crm_auth(world)  # a condition: repeats hourly while it lasts
    _dead_letter(world)  # an item: once, then in the digest
    today = dt.datetime.now(dt.UTC).replace(hour=10, minute=0, second=0, microsecond=0)

    first = world.run(today)
    assert sorted(alert.kind for alert in first.sent) == ["crm_auth", "dead_letter"] and not first.digest
    assert len(world.sink.bodies("/teams")) == 2

    soon = world.run(today + dt.timedelta(minutes=10))
    assert soon.sent == [] and soon.digest  # nothing new; the open problems go out as the digest
    digest = world.slack_texts()[-1]
    assert "Daily digest: 2 problems still open" in digest and "ref-42" in digest
    assert len(world.sink.bodies("/teams")) == 3

    again = world.run(today + dt.timedelta(minutes=30))
    assert again.sent == [] and not again.digest  # one digest a day
    hour_later = world.run(today + dt.timedelta(minutes=61))
    assert [alert.kind for alert in hour_later.sent] == ["crm_auth"]  # the condition, not the dead letter
    next_day = world.run(today + dt.timedelta(days=1, minutes=5))
    assert [alert.kind for alert in next_day.sent] == ["crm_auth"] and next_day.digest  # a new day, a new digest
    assert "Daily digest: 1 problem still open" in world.slack_texts()[-1]
    assert len(world.emails()) == len(world.sink.bodies("/teams")) == 6


def test_a_resolved_cause_alerts_again_when_it_returns(world: World) -> None:
    _crm_auth(world)
    now = dt.datetime.now(dt.UTC)
    assert [alert.kind for alert in world.run(now).sent] == ["crm_auth"]
    world.state.record_run(runs.CRM_POLL)  # fixed
    assert world.run(now + dt.timedelta(minutes=5)).sent == []
    _crm_auth(world)  # broken again ten minutes later: news, not a repeat
    assert [alert.kind for alert in world.run(now + dt.timedelta(minutes=10)).sent] == ["crm_auth"]


def test_a_burst_is_capped_and_the_rest_go_out_as_one_summary(world: World) -> None:
    for _ in range(alerts.IMMEDIATE_LIMIT + 3):
        _record_error(world)
    result = world.run()
    assert len(result.sent) == alerts.IMMEDIATE_LIMIT + 3
    texts = world.slack_texts()
    assert len(texts) == alerts.IMMEDIATE_LIMIT + 1
    assert "3 more problems need attention" in texts[-1]


def test_a_failing_channel_does_not_stop_the_others_and_an_undelivered_alert_is_retried(
    world: World, smtp: tuple[Mailbox, int]
) -> None:
    _dead_letter(world)
    world.sink.failing.add("/slack")
    with pytest.raises(alerts.AlertsNotSent) as refused:
        world.run()
    assert "Slack alert not sent" in str(refused.value) and "HTTP 500" in str(refused.value)
    assert world.sink.url not in str(refused.value)  # the webhook URL is a secret
    assert len(world.sink.bodies("/teams")) == 1 and len(world.emails()) == 1

    # Every channel down: nothing is marked sent, so the next run tries again.
    _record_error(world)
    world.sink.failing.update({"/slack", "/teams"})
    mailbox, port = smtp
    settings = load_settings(
        alert_environment(world.connection, world.sink, _free_port())  # nobody listens there
    )
    world.settings = settings
    with pytest.raises(alerts.AlertsNotSent) as all_down:
        world.run()
    assert "email alert not sent" in str(all_down.value)
    world.sink.failing.clear()
    world.settings = load_settings(alert_environment(world.connection, world.sink, port))
    retried = world.run()
    assert [alert.kind for alert in retried.sent] == ["record_error"]


def test_the_timer_evaluates_alerts_and_a_failing_send_is_recorded_not_raised_into_a_sync(
    world: World, monkeypatch: pytest.MonkeyPatch, private_azurite: Azurite
) -> None:
    _dead_letter(world)
    environment = alert_environment(
        private_azurite.connection_string,
        world.sink,
        int(str(world.settings.alert_smtp_port)),
        ALERT_SCHEDULE="*/1 * * * * *",
        PC_AUTHORITY_HOST="https://127.0.0.1:9",  # nothing listens: the sign-in part fails locally
        PC_API_BASE_URL="https://127.0.0.1:9",
    )
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    host = LocalHost(functions=functions_of([function_app.app], ["evaluate_alerts"]), environ=environment, http_port=0)
    host.start()
    try:
        wait_until(
            lambda: any("ref-42" in text for text in world.slack_texts()), timeout=20, what="the dead letter on Slack"
        )
        world.sink.failing.add("/teams")
        _record_error(world)
        failed = wait_until(
            lambda: (run := world.state.get_run(runs.ALERTS)) and not run.succeeded and run,
            timeout=20,
            what="a recorded alert failure",
        )
        assert failed and failed.error and "Teams alert not sent" in failed.error
    finally:
        host.stop()
        bootstrap.reset()


def test_email_goes_over_starttls_with_the_smtp_sign_in(world: World) -> None:
    from aiosmtpd.smtp import AuthResult

    files = issue_certificate("alerts-smtp")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(files.cert_path, files.key_path)
    mailbox = Mailbox()

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        return AuthResult(success=auth_data.login == b"alerts" and auth_data.password == b"s3cret")

    port = _free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
    )
    controller.start()
    try:
        secure = {
            "ALERT_SMTP_SECURITY": "starttls",
            "ALERT_SMTP_USERNAME": "alerts",
            "TLS_CA_BUNDLE": str(ensure_ca().cert_path),
            "ALERT_TEAMS_WEBHOOK_URL": "",
            "ALERT_SLACK_WEBHOOK_URL": "",
        }
        plain = load_settings(
            alert_environment(world.connection, world.sink, port, **{**secure, "ALERT_SMTP_SECURITY": "none"})
        )
        (refused,) = AlertChannels(plain)("test", [], PAGE_URL)  # this server insists on TLS first
        assert refused.startswith("email alert not sent: SMTP") and "STARTTLS" in refused
        _dead_letter(world)
        world.settings = load_settings(
            alert_environment(world.connection, world.sink, port, ALERT_SMTP_PASSWORD="s3cret", **secure)
        )
        assert [alert.kind for alert in world.run().sent] == ["dead_letter"]
        (email,) = mailbox.all()
        assert "ref-42" in email["Subject"]
    finally:
        controller.stop()
