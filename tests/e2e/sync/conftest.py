"""Harness of the end-to-end sync scenarios (issue 6): the real Function app on the local host,
Azurite, and the simulators of Partner Center, Salesforce and Dataverse.

One host per (CRM kind, settings variant) and test module: the `crm` fixture is module-scoped and
parametrized, so pytest runs every scenario of a module against Salesforce, then Dynamics 365.
A module changes app settings by overriding the `settings_overrides` fixture.

`SyncSystem.assert_quiet()` (scenario 15, called at the end of every scenario) waits for the
queue to drain, records what each simulator received during the scenario in
`.sandbox/test/sync-scenario-calls.md`, then lets two more CRM polls pass and asserts that no
write reached Partner Center or the CRM since.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import credentials
from sandbox.azurite import Azurite
from sandbox.host import LocalHost, QueueOptions, functions_of
from sandbox.partner_center import PartnerCenterSimulator
from sandbox.salesforce import SalesforceSimulator
from sandbox.simulators import SandboxServices
from shared.crm.port import CrmObjectKind, CrmPort, CrmRecord, CrmRef
from shared.http import tls_context
from shared.partner_center.auth import PartnerCenterAuth
from shared.partner_center.registration import WebhookRegistrar
from shared.settings import Settings, load_settings
from shared.sync.queues import SYNC_QUEUE, QueueProducer
from shared.sync.state import AuditEntry, StateStore, link_id_for_referral
from shared.sync.storage import StorageAccount
from tests.conftest import base_environment
from tests.e2e.sync.drivers import (
    CallLog,
    DynamicsSeller,
    PartnerCenterDriver,
    RawRecord,
    SalesforceSeller,
    Seller,
    SimulatorControl,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.azurite, pytest.mark.sandbox, pytest.mark.e2e]

SYNC_TRIGGERS = ("process_sync_request", "poll_crm_changes", "reconcile_partner_center")
POLL_FUNCTION = "poll_crm_changes"
RARE_SCHEDULE = "0 0 0 1 1 *"  # once a year: the reconcile timer stays out of the way
CALLS_REPORT = Path(__file__).resolve().parents[3] / ".sandbox" / "test" / "sync-scenario-calls.md"
# Requests that change nothing even though they are not GETs.
READ_ONLY_ROUTES = {"/services/oauth2/token", "/services/Soap/u/{version}"}
WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}
SYNC_TIMEOUT = 30.0


# ---- per-scenario API call counts -------------------------------------------------------------------
@dataclass
class ScenarioCalls:
    scenario: str
    crm: str
    pc: Counter[str]
    crm_calls: Counter[str]
    quiet_pc: Counter[str]
    quiet_crm: Counter[str]
    test_reads: int
    seconds: float


_REPORT: dict[tuple[str, str], ScenarioCalls] = {}


def _write_report() -> None:
    lines = [
        "# API calls per sync scenario",
        "",
        "Requests each simulator logged (`GET /_sandbox/requests`, counted per method + route) from the",
        "start of a scenario until the sync queue drained, minus the calls the test's own drivers made",
        "(seller / partner actions). The CRM poll runs every second in these tests, so every scenario",
        "also carries its poll queries. 'Quiet' is the window of two further polls after the scenario",
        "settled (scenario 15): reads only, no writes. 'test reads' = CRM calls of the test's own",
        "adapter reads for its assertions (also subtracted where they could be attributed).",
        "",
    ]
    for (scenario, crm), calls in sorted(_REPORT.items()):
        lines.append(f"## {scenario} [{crm}] ({calls.seconds:.1f} s)")
        lines.append("")
        for title, counter in (
            ("Partner Center", calls.pc),
            (crm, calls.crm_calls),
            ("Partner Center, quiet window", calls.quiet_pc),
            (f"{crm}, quiet window", calls.quiet_crm),
        ):
            total = sum(counter.values())
            detail = ", ".join(f"{route} x{count}" for route, count in sorted(counter.items())) or "none"
            lines.append(f"- {title}: {total} calls: {detail}")
        lines.append(f"- test reads: {calls.test_reads}")
        lines.append("")
    CALLS_REPORT.parent.mkdir(parents=True, exist_ok=True)
    CALLS_REPORT.write_text("\n".join(lines), encoding="utf-8")


# ---- the running system -----------------------------------------------------------------------------
@dataclass
class Mark:
    pc: int
    crm: int
    polls: int
    driver_calls: int
    at: float


@dataclass
class SyncSystem:
    """The app on the local host plus everything a scenario needs to act and observe."""

    crm: str
    host: LocalHost
    settings: Settings
    environment: dict[str, str]
    partner_center: PartnerCenterDriver
    seller: Seller
    adapter: CrmPort
    state: StateStore
    queues: QueueProducer
    pc_control: SimulatorControl
    crm_control: SimulatorControl
    calls: CallLog
    pc_simulator: PartnerCenterSimulator
    scenario: str = ""
    _start: Mark | None = None
    _excluded_crm: set[int] = field(default_factory=set)
    _test_reads: int = 0

    # marks and logs
    def polls(self) -> int:
        return sum(1 for item in self.host.invocations if item.function == POLL_FUNCTION)

    def mark(self) -> Mark:
        return Mark(
            len(self.pc_control.requests()),
            len(self.crm_control.requests()),
            self.polls(),
            len(self.calls.calls),
            time.monotonic(),
        )

    def begin(self, scenario: str) -> None:
        """Start a scenario: its API calls are counted from here."""
        self.scenario = scenario
        self._excluded_crm = set()
        self._test_reads = 0
        self._start = self.mark()

    def _since(self, mark: Mark, upto: Mark | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        pc = self.pc_control.requests()[mark.pc : upto.pc if upto else None]
        crm_entries = self.crm_control.requests()
        crm = [
            entry
            for index, entry in enumerate(crm_entries[: upto.crm if upto else None])
            if index >= mark.crm and index not in self._excluded_crm
        ]
        return pc, crm

    def _counts(self, entries: list[dict[str, Any]], own: list[tuple[str, str]]) -> Counter[str]:
        remaining = Counter(own)
        counts: Counter[str] = Counter()
        for entry in entries:
            key = (entry["method"], entry["path"])
            if remaining[key] > 0:
                remaining[key] -= 1  # the test's own action, not the app's
                continue
            counts[f"{entry['method']} {entry['route']}"] += 1
        return counts

    def writes_since(self, mark: Mark) -> list[str]:
        pc, crm = self._since(mark)
        own = self.calls.calls[mark.driver_calls :]
        writes: list[str] = []
        for system, entries in (("pc", pc), ("crm", crm)):
            mine = [(method, path) for who, method, path in own if who == system]
            for call, count in self._counts(entries, mine).items():
                method, _, route = call.partition(" ")
                if method in WRITE_METHODS and route not in READ_ONLY_ROUTES:
                    writes.append(f"{system}: {call} x{count}")
        return writes

    # waiting
    def queue_empty(self) -> bool:
        return self.queues.depth(SYNC_QUEUE) == 0

    def settle(self, timeout: float = SYNC_TIMEOUT) -> None:
        wait_until(self.queue_empty, timeout=timeout, what="the sync queue to drain")

    def wait_for_polls(self, count: int, *, since: Mark | None = None, timeout: float = SYNC_TIMEOUT) -> None:
        base = since.polls if since else self.polls()
        wait_until(lambda: self.polls() >= base + count, timeout=timeout, what=f"{count} more CRM poll runs")

    def idle(self) -> Mark:
        """Let the system take in everything that happened so far: two polls, then a drained queue."""
        mark = self.mark()
        self.wait_for_polls(2, since=mark)
        self.settle()
        return mark

    def assert_quiet(self) -> None:
        """Scenario 15, after every scenario: record the scenario's calls, then two more polls bring no write."""
        assert self._start is not None, "call system.begin(<scenario>) first"
        self.settle()
        settled = self.mark()
        pc, crm = self._since(self._start, settled)
        own = self.calls.calls[self._start.driver_calls : settled.driver_calls]
        scenario_pc = self._counts(pc, [(m, p) for who, m, p in own if who == "pc"])
        scenario_crm = self._counts(crm, [(m, p) for who, m, p in own if who == "crm"])
        self.wait_for_polls(2, since=settled)
        self.settle()
        writes = self.writes_since(settled)
        quiet_pc, quiet_crm = self._since(settled)
        _REPORT[(self.scenario, self.crm)] = ScenarioCalls(
            scenario=self.scenario,
            crm=self.crm,
            pc=scenario_pc,
            crm_calls=scenario_crm,
            quiet_pc=self._counts(quiet_pc, []),
            quiet_crm=self._counts(quiet_crm, []),
            test_reads=self._test_reads,
            seconds=settled.at - self._start.at,
        )
        _write_report()
        if writes:
            pc_entries, crm_entries = self._since(settled)
            paths = sorted({e["path"] for e in pc_entries + crm_entries if e["method"] in WRITE_METHODS})[:6]
            recent = [f"{i.function}:{i.outcome}" for i in self.host.invocations[-8:]]
            raise AssertionError(
                f"not quiet after the scenario settled: {writes} on {paths}; last invocations {recent}"
            )

    # reading results
    def read(self, kind: CrmObjectKind, record_id: str) -> CrmRecord:
        """The record through our adapter (itself tested against the simulators); excluded from the counts."""
        before = len(self.crm_control.requests())
        try:
            return self.adapter.read(CrmRef(kind=kind, id=record_id))
        finally:
            after = len(self.crm_control.requests())
            self._excluded_crm.update(range(before, after))
            self._test_reads += after - before

    def wait_for_record(
        self, referral_id: str, *, kind: CrmObjectKind = "opportunity", status: str = "Synced"
    ) -> RawRecord:
        def found() -> RawRecord | None:
            records = self.seller.find(kind, referral_id)
            return records[0] if records and records[0].sync_status == status else None

        record = wait_until(found, timeout=SYNC_TIMEOUT, what=f"a {kind} for referral {referral_id} ({status})")
        assert record is not None
        return record

    def wait_for_raw(self, kind: CrmObjectKind, record_id: str, condition: Any, what: str) -> RawRecord:
        def check() -> RawRecord | None:
            record = self.seller.raw(kind, record_id)
            return record if condition(record) else None

        try:
            record = wait_until(check, timeout=SYNC_TIMEOUT, what=what)
        except AssertionError as error:  # say where the record stands: that is the evidence
            raise AssertionError(f"{error}; the record now: {self._describe(kind, record_id)}") from None
        assert record is not None
        return record

    def _describe(self, kind: CrmObjectKind, record_id: str) -> str:
        raw = self.seller.raw(kind, record_id)
        recent = [
            f"{i.function}:{i.outcome}:{i.detail[:300]}" for i in self.host.invocations if i.outcome != "succeeded"
        ]
        return (
            f"name={raw.name!r} sync={raw.sync_enabled} status={raw.sync_status} referral={raw.referral_id} "
            f"mirror={raw.referral_status!r} audit={raw.audit[:600]!r}; failed invocations: {recent[-3:]}"
        )

    def wait_for_referral(self, referral_id: str, condition: Any, what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            referral = self.partner_center.referral(referral_id)
            return referral if condition(referral) else None

        referral = wait_until(check, timeout=SYNC_TIMEOUT, what=what)
        assert referral is not None
        return referral

    def deliver_event(self, event: str, referral_id: str, change_date: str) -> int:
        """Partner Center delivering an event (again), signed with its own key, as duplicates arrive."""
        simulator = self.pc_simulator
        body = json.dumps(
            {
                "EventName": event,
                "ResourceUri": f"{simulator.base_url}/engagements/v1/referrals/{referral_id}",
                "ResourceName": "referral",
                "AuditUri": None,
                "ResourceChangeUtcDate": change_date,
            },
            separators=(",", ":"),
        ).encode()
        response = httpx.post(
            f"{self.host.url}/api/partner-center/events",
            params={"code": credentials.FUNCTION_KEY},
            content=body,
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Authorization": f"Signature {simulator.sign(body)}",
                "x-ms-certificate-url": simulator.certificate_url,
                "x-ms-signature-algorithm": "rsa-sha256",
            },
            timeout=30,
        )
        return response.status_code

    def audit(self, referral_id: str) -> list[AuditEntry]:
        return self.state.list_audit(link_id_for_referral(referral_id), limit=50)


# ---- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["salesforce", "dynamics"])
def crm(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def settings_overrides() -> dict[str, str]:
    """App settings a module changes (a settings variant gets its own host)."""
    return {}


def _require_sync_triggers(functions: list[Any]) -> None:
    names = {function.get_function_name() for function in functions}
    present = [name for name in SYNC_TRIGGERS if name in names]
    if not present:
        pytest.skip(f"the sync engine's triggers {', '.join(SYNC_TRIGGERS)} are not in function_app.py yet")
    missing = [name for name in SYNC_TRIGGERS if name not in names]
    if missing:
        pytest.fail(f"function_app.py lacks the sync triggers {', '.join(missing)}")


@pytest.fixture(scope="module")
def system(
    crm: str,
    settings_overrides: dict[str, str],
    azurite: Azurite,
    sandbox_services: SandboxServices,
) -> Iterator[SyncSystem]:
    import function_app
    from shared import bootstrap

    functions = functions_of([function_app.app])
    _require_sync_triggers(functions)
    environment = base_environment(
        azurite.connection_string,
        SANDBOX_FUNCTION_KEY=credentials.FUNCTION_KEY,
        **sandbox_services.app_settings(),
        CRM_KIND=crm,
        CRM_POLL_SCHEDULE="*/1 * * * * *",
        PC_RECONCILE_SCHEDULE=RARE_SCHEDULE,
        PC_TOKEN_REFRESH_SCHEDULE=RARE_SCHEDULE,
        ALERT_SCHEDULE=RARE_SCHEDULE,
    )
    environment.update(settings_overrides)
    settings = load_settings(environment)
    http = httpx.Client(verify=tls_context(settings.tls_ca_bundle), timeout=30)
    storage = StorageAccount(connection_string=azurite.connection_string)
    auth = PartnerCenterAuth.from_settings(settings, storage)
    auth.login(show=lambda _message: None)  # the identity simulator approves the device code
    pc_control = SimulatorControl("partner-center", sandbox_services.partner_center.url, http)
    pc_simulator = sandbox_services.partner_center.simulator
    assert isinstance(pc_simulator, PartnerCenterSimulator)
    crm_server = sandbox_services.salesforce if crm == "salesforce" else sandbox_services.dataverse
    crm_control = SimulatorControl(crm, crm_server.url, http)
    calls = CallLog()
    seller: Seller
    if crm == "salesforce":
        simulator = sandbox_services.salesforce.simulator
        multi_currency = isinstance(simulator, SalesforceSimulator) and simulator.multi_currency
        seller = SalesforceSeller(crm_control, settings, calls, multi_currency=multi_currency)
        from shared.crm.salesforce import SalesforceAdapter

        adapter: CrmPort = SalesforceAdapter(settings)
    else:
        seller = DynamicsSeller(crm_control, settings, calls)
        from shared.crm.dynamics import DynamicsCrm

        adapter = DynamicsCrm(settings)

    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        for name in ("CRM_DEAL_VALUE_FIELD", "CRM_DEAL_CURRENCY_FIELD", "CRM_ACCOUNT_COUNTRY_FIELD"):
            if name not in environment:
                patch.delenv(name, raising=False)
        bootstrap.reset()
        host = LocalHost(
            functions=functions,
            environ=environment,
            http_port=0,
            queue_options=QueueOptions(batch_size=4, max_polling_interval=0.2, visibility_timeout=0.5),
        ).start()
        try:
            WebhookRegistrar.from_settings(settings, auth.token).ensure(
                f"{host.url}/api/partner-center/events?code={credentials.FUNCTION_KEY}"
            )
            yield SyncSystem(
                crm=crm,
                host=host,
                settings=settings,
                environment=environment,
                partner_center=PartnerCenterDriver(
                    pc_control, settings.pc_api_base_url, lambda: auth.token(settings.pc_api_scope), calls
                ),
                seller=seller,
                adapter=adapter,
                state=StateStore(storage),
                queues=QueueProducer(storage),
                pc_control=pc_control,
                crm_control=crm_control,
                calls=calls,
                pc_simulator=pc_simulator,
            )
        finally:
            host.stop()
            bootstrap.reset()
            http.close()


@pytest.fixture
def sync(system: SyncSystem) -> Iterator[SyncSystem]:
    """The module's system, with faults of an earlier failed scenario cleared."""
    system.pc_control.clear_faults()
    system.crm_control.clear_faults()
    yield system
    system.pc_control.clear_faults()
    system.crm_control.clear_faults()


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()
