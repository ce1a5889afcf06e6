"""`python -m shared backfill` against the simulators and Azurite, for Salesforce and Dynamics 365.

One referral without a CRM record, one CRM opportunity without a referral, one linked pair whose
notes differ, one record naming a referral Partner Center does not have. The dry run reports all
four and writes nothing anywhere (the simulators' request logs and every table and queue prove
it); an interrupted --apply resumes where it stopped and queues exactly the syncs the report
listed; the real worker then syncs them, and a second dry run finds nothing left to queue.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import credentials
from sandbox.azurite import Azurite
from sandbox.salesforce import SalesforceSimulator
from sandbox.simulators import SandboxServices
from shared import bootstrap
from shared.admin.cli import main
from shared.backfill.commands import parse_since
from shared.backfill.compare import Scope, compare
from shared.backfill.run import BackfillStore, PlannedSync, RateLimiter, plan_of, queue_plan
from shared.http import tls_context
from shared.partner_center.auth import PartnerCenterAuth
from shared.partner_center.registration import WebhookRegistrar
from shared.settings import Settings, load_settings
from shared.sync import worker
from shared.sync.queues import SYNC_QUEUE, PartnerCenterChange, parse_sync_request
from shared.sync.storage import StorageAccount
from tests.conftest import base_environment
from tests.e2e.sync.drivers import (
    Account,
    CallLog,
    Contact,
    DynamicsSeller,
    PartnerCenterDriver,
    SalesforceSeller,
    Seller,
    SimulatorControl,
    Solution,
    cosell_referral,
    tag,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.azurite, pytest.mark.sandbox, pytest.mark.e2e]

WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE", "MERGE"}
TOKEN_ROUTES = {"/services/oauth2/token"}  # signing in to Salesforce changes nothing
NO_SETTINGS_FILE = ["--local-settings", "/nonexistent/local.settings.json"]


@dataclass
class Backfill:
    crm: str
    settings: Settings
    storage: StorageAccount
    partner_center: PartnerCenterDriver
    seller: Seller
    pc_control: SimulatorControl
    crm_control: SimulatorControl

    def cli(self, *arguments: str) -> tuple[int, str]:
        out = io.StringIO()
        code = main([*NO_SETTINGS_FILE, "backfill", *arguments], out=out)
        return code, out.getvalue()

    def request_counts(self) -> tuple[int, int]:
        return len(self.pc_control.requests()), len(self.crm_control.requests())

    def writes_since(self, counts: tuple[int, int]) -> list[str]:
        pc = self.pc_control.requests()[counts[0] :]
        crm = self.crm_control.requests()[counts[1] :]
        return [
            f"{entry['method']} {entry['path']}"
            for entry in pc + crm
            if entry["method"] in WRITE_METHODS and entry["route"] not in TOKEN_ROUTES
        ]

    def storage_contents(self) -> dict[str, Any]:
        """Every entity of every table (with its ETag) and the messages of both sync queues."""
        from azure.data.tables import TableServiceClient

        service = TableServiceClient.from_connection_string(self.settings.storage_connection_string() or "")
        contents: dict[str, Any] = {}
        for table in service.list_tables():
            client = service.get_table_client(table.name)
            contents[table.name] = sorted(
                (entity["PartitionKey"], entity["RowKey"], entity.metadata["etag"]) for entity in client.list_entities()
            )
        for queue in (SYNC_QUEUE, f"{SYNC_QUEUE}-poison"):
            client = self.storage.queue_client(queue)
            self.storage.ensure_queue(client)
            contents[queue] = sorted(message.id for message in client.peek_messages(max_messages=32))
        return contents

    def queued(self, ids: set[str]) -> list[str]:
        """The queued sync requests naming one of `ids` (the shared queue may still hold a message an
        earlier module's host left in flight)."""
        client = self.storage.queue_client(SYNC_QUEUE)
        return [
            parse_sync_request(message.content).model_dump_json(exclude={"received_at", "traceparent", "tracestate"})
            for message in client.peek_messages(max_messages=32)
            if _names(message.content, ids)
        ]

    def run_worker(self, ids: set[str]) -> int:
        """The real `sync` queue worker on every queued message naming one of `ids`, until none is left."""
        client = self.storage.queue_client(SYNC_QUEUE)
        handled = 0
        while True:
            messages = list(client.receive_messages(max_messages=16, visibility_timeout=60))
            if not messages:
                return handled
            for message in messages:
                if _names(message.content, ids):
                    worker.process(
                        bootstrap.state_store,
                        bootstrap.sync_engine,
                        bootstrap.queue_producer,
                        payload=message.content,
                        dequeue_count=message.dequeue_count or 1,
                    )
                    handled += 1
                client.delete_message(message)


def _names(payload: str, ids: set[str]) -> bool:
    request = parse_sync_request(payload)
    return (request.referral_id if isinstance(request, PartnerCenterChange) else request.record_id) in ids


@pytest.fixture(scope="module", params=["salesforce", "dynamics"])
def backfill(request: pytest.FixtureRequest, azurite: Azurite, sandbox_services: SandboxServices) -> Iterator[Backfill]:
    crm = str(request.param)
    environment = base_environment(
        azurite.connection_string,
        SANDBOX_FUNCTION_KEY=credentials.FUNCTION_KEY,
        **sandbox_services.app_settings(),
        CRM_KIND=crm,
        BACKFILL_SYNCS_PER_MINUTE="6000",
    )
    settings = load_settings(environment)
    storage = StorageAccount(connection_string=azurite.connection_string)
    auth = PartnerCenterAuth.from_settings(settings, storage)
    auth.login(show=lambda _message: None)  # the identity simulator approves the device code
    # Only this test's worker syncs here: Partner Center's webhooks go to a closed port, not to the
    # host of an earlier module (which may still answer on a connection its client kept alive).
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
    WebhookRegistrar.from_settings(settings, auth.token).ensure(
        f"http://127.0.0.1:{closed_port}/api/partner-center/events"
    )
    http = httpx.Client(verify=tls_context(settings.tls_ca_bundle), timeout=30)
    calls = CallLog()
    pc_control = SimulatorControl("partner-center", sandbox_services.partner_center.url, http)
    crm_server = sandbox_services.salesforce if crm == "salesforce" else sandbox_services.dataverse
    crm_control = SimulatorControl(crm, crm_server.url, http)
    seller: Seller
    if crm == "salesforce":
        simulator = sandbox_services.salesforce.simulator
        multi_currency = isinstance(simulator, SalesforceSimulator) and simulator.multi_currency
        seller = SalesforceSeller(crm_control, settings, calls, multi_currency=multi_currency)
    else:
        seller = DynamicsSeller(crm_control, settings, calls)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        bootstrap.reset()
        try:
            yield Backfill(
                crm=crm,
                settings=settings,
                storage=storage,
                partner_center=PartnerCenterDriver(
                    pc_control, settings.pc_api_base_url, lambda: auth.token(settings.pc_api_scope), calls
                ),
                seller=seller,
                pc_control=pc_control,
                crm_control=crm_control,
            )
        finally:
            bootstrap.reset()
            http.close()


def new_opportunity(seller: Seller, *, sync: bool = True) -> str:
    token = tag()
    account_id = seller.create_account(Account(name=f"Backfill {token} B.V.", postal_code=f"35{token[:2]} AB"))
    contact_id = seller.create_contact(
        Contact("Sanne", f"de Vries {token}", f"sanne.{token}@tailspin.example"), account_id
    )
    return seller.create_opportunity(
        f"Backfill {token} - data platform",
        account_id=account_id,
        contact_ids=[contact_id],
        solutions=[Solution(f"SOL-{token}", "Lakehouse Accelerator")],
        deal_value=Decimal(91000),
        currency="EUR",
        close_date=dt.date(2027, 5, 31),
        notes="Lakehouse on Azure; PoC in January.",
        help_needed="ProofOfConceptOrDemo",
        visible=True,
        sync=sync,
    )


def report_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_dry_run_reports_every_kind_of_difference_and_apply_queues_exactly_those_syncs(
    backfill: Backfill, empty_sync_queues: None, tmp_path: Path
) -> None:
    # A whole second after everything earlier tests did (the simulators keep whole-second stamps):
    # the --since window then holds exactly what this test does.
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
    wait_until(lambda: dt.datetime.now(dt.UTC) >= start, timeout=2, interval=0.02, what="the next second")
    since = start.isoformat()

    # A linked pair: synced once by the real worker, then the partner edits its notes in Partner Center.
    linked = backfill.partner_center.share_referral(cosell_referral())
    bootstrap.queue_producer().send(PartnerCenterChange(referral_id=linked["id"], event="test"))
    assert backfill.run_worker({linked["id"]}) == 1
    linked_record = backfill.seller.find("opportunity", linked["id"])[0]
    backfill.partner_center.edit(
        linked["id"], [{"op": "replace", "path": "/details/notes", "value": "Now SAP and AVD."}]
    )
    # Not synced yet: a referral Microsoft shared, a seller's opportunity, a record naming a missing referral.
    shared = backfill.partner_center.share_referral(cosell_referral())
    opportunity_id = new_opportunity(backfill.seller)
    orphan_id = new_opportunity(backfill.seller, sync=False)
    missing = f"missing-{tag()}"
    backfill.seller.update("opportunity", orphan_id, referral_id=missing, sync=True)
    ours = {linked["id"], linked_record.id, shared["id"], opportunity_id, orphan_id}

    # ---- dry run: the report, and no write anywhere
    before_storage = backfill.storage_contents()
    before_requests = backfill.request_counts()
    report = tmp_path / "dry-run.csv"
    code, printed = backfill.cli("--dry-run", "--since", since, "--report", str(report))
    assert code == 0, printed
    assert backfill.writes_since(before_requests) == []
    assert backfill.storage_contents() == before_storage
    assert "nothing was written" in printed and "queues the 4 sync(s)" in printed

    rows = report_rows(report)
    findings = {(row["category"], row["referral"], row["crm_record"]): row for row in rows if not row["field"]}
    assert findings[("referral without CRM record", shared["id"], "-")]["action"] == "create a CRM opportunity"
    assert findings[("CRM record without referral", "-", f"opportunity {opportunity_id}")]["action"] == (
        "create a Partner Center referral"
    )
    assert "mark the record Error" in findings[("orphan", missing, f"opportunity {orphan_id}")]["action"]
    pair = ("fields differ", linked["id"], f"opportunity {linked_record.id}")
    assert pair in findings
    notes = next(row for row in rows if (row["category"], row["referral"]) == pair[:2] and row["field"] == "notes")
    assert (notes["partner_center_value"], notes["crm_value"], notes["action"]) == (
        "Now SAP and AVD.",
        "Customer wants to move SAP workloads to Azure by Q2.",
        "Partner Center -> CRM",
    )
    assert len(findings) == 4

    html_report = tmp_path / "dry-run.html"
    code, _ = backfill.cli("--dry-run", "--since", since, "--report", str(html_report))
    assert code == 0 and "<td>Now SAP and AVD.</td>" in html_report.read_text(encoding="utf-8")

    # ---- apply, interrupted after the first sync, then resumed by the command
    scope = Scope(since=parse_since(since))
    comparison = compare(backfill.settings, bootstrap.partner_center(), bootstrap.crm(), bootstrap.state_store(), scope)
    store = BackfillStore(backfill.storage)
    run = store.create(scope, plan_of(comparison))

    def interrupt(item: PlannedSync) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        queue_plan(store, run, bootstrap.queue_producer(), RateLimiter(6000), on_queued=interrupt)
    assert len(backfill.queued(ours)) == 1

    code, printed = backfill.cli("--apply", "--since", "2020-01-01")
    assert code == 1 and "was started with other options" in printed and "Nothing was queued" in printed
    assert len(backfill.queued(ours)) == 1

    code, printed = backfill.cli("--apply", "--since", since)
    assert code == 0, printed
    assert f"resuming backfill {run.run_id}" in printed and "1 of 4 already queued" in printed
    assert "queued 3 sync(s) now, 4 in all" in printed
    expected = sorted(
        parse_sync_request(payload).model_dump_json(exclude={"received_at", "traceparent", "tracestate"})
        for payload, _label in plan_of(comparison)
    )
    assert sorted(backfill.queued(ours)) == expected
    assert store.unfinished() is None

    # ---- the worker syncs them; nothing is left to queue
    assert backfill.run_worker(ours) == 4
    assert backfill.seller.find("opportunity", shared["id"])
    assert backfill.seller.raw("opportunity", opportunity_id).referral_id
    assert backfill.seller.raw("opportunity", orphan_id).sync_status == "Error"
    assert backfill.seller.raw("opportunity", linked_record.id).sync_status == "Synced"
    code, printed = backfill.cli("--dry-run", "--since", since, "--report", str(tmp_path / "after.csv"))
    assert code == 0 and "Syncs to queue: 0" in printed, printed
    after = report_rows(tmp_path / "after.csv")
    assert [row["category"] for row in after if not row["field"]] == ["orphan"], [
        {k: v for k, v in row.items() if k in ("category", "field", "partner_center_value", "crm_value", "action")}
        for row in after
    ]  # a person must decide


def test_unknown_ids_give_a_clear_message_and_change_nothing(backfill: Backfill, empty_sync_queues: None) -> None:
    missing = f"missing-{tag()}"
    # Well-formed ids nobody has: an 18-character Salesforce id, a Dataverse GUID.
    unknown = f"0065g{uuid.uuid4().hex[:13]}" if backfill.crm == "salesforce" else str(uuid.uuid4())
    before_storage = backfill.storage_contents()
    before_requests = backfill.request_counts()
    for mode in ("--dry-run", "--apply"):
        code, printed = backfill.cli(mode, "--referral", missing, "--opportunity", unknown)
        assert code == 1
        assert f"referral {missing} does not exist in Partner Center" in printed
        assert f"CRM opportunity {unknown} does not exist" in printed
        assert "Nothing was compared or queued" in printed
    code, printed = backfill.cli("--dry-run", "--referral", "a/b")
    assert code == 1 and "not a valid URL path segment" in printed
    code, printed = backfill.cli("--dry-run", "--since", "2026-01-01", "--referral", missing)
    assert code == 2 and "cannot be combined" in printed
    code, printed = backfill.cli("--dry-run", "--report", "out.xlsx")
    assert code == 2 and "must name a .csv or .html file" in printed
    with pytest.raises(SystemExit) as exit_info:
        backfill.cli("--dry-run", "--since", "last tuesday")
    assert exit_info.value.code == 2
    assert backfill.writes_since(before_requests) == []
    after = backfill.storage_contents()
    after.pop("backfill", None)  # --apply looks for an unfinished run (creating the table on first use)
    before_storage.pop("backfill", None)
    assert after == before_storage


def test_an_unfinished_run_can_be_abandoned_instead_of_resumed(
    backfill: Backfill, empty_sync_queues: None, tmp_path: Path
) -> None:
    store = BackfillStore(backfill.storage)
    abandoned = f"abandoned-{tag()}"
    payload = PartnerCenterChange(referral_id=abandoned, event="backfill").model_dump_json(exclude_none=True)
    run = store.create(Scope(since=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)), [(payload, f"referral {abandoned}")])
    assert store.unfinished() == run

    code, printed = backfill.cli("--dry-run", "--abandon-unfinished")
    assert code == 2 and "goes with --apply" in printed
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
    code, printed = backfill.cli(
        "--apply", "--abandon-unfinished", "--since", since, "--report", str(tmp_path / "r.csv")
    )
    assert f"abandoned the unfinished backfill {run.run_id}" in printed, printed
    assert store.unfinished() is None or store.unfinished() != run
    assert backfill.queued({abandoned}) == []  # the dropped plan's sync was never sent
