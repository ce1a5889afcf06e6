"""Benchmark: the CRM poll after a bulk change, for Salesforce and Dynamics 365 (loopback only).

Scenario, the same for both CRMs (the production failure of issue 20): 1,000 opportunities get
Sync with Partner Center = Yes in one bulk update spread over 10 seconds of CRM time, and a seller
edits one of them 5 minutes later (at a different sub-second offset). The poll runs once per
simulated minute (`CRM_POLL_SCHEDULE`'s default) for 10 minutes: at minutes 1-5 after the bulk
change, the edit happens just before minute 6, and minutes 6-10 are idle.

Printed per CRM:
- syncs queued per changed record = every `sync` message the 10 polls queued / 1,001 changes
  (target 1.0);
- idle-poll syncs per minute = messages queued by the polls after the last change (minutes 7-10,
  after the poll that picks up the edit) / 4 (target 0);
- failed polls, and the size of the stored watermark entity after the run.

Run: `.venv/bin/python -m bench.bulk_poll` (starts its own Azurite and simulators on free ports).
`--append FILE` also appends the result to a Markdown file with date, commit, machine and load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import credentials
from sandbox.azurite import Azurite, start_azurite
from sandbox.dataverse import DataverseSimulator
from sandbox.dataverse import write_as_seller as write_dataverse
from sandbox.salesforce import SalesforceSimulator
from sandbox.salesforce import write_as_seller as write_salesforce
from sandbox.simulators import SandboxServices, start_all
from shared.crm.port import CrmPort
from shared.settings import load_settings
from shared.sync import polling
from shared.sync.queues import SYNC_QUEUE, QueueProducer
from shared.sync.state import WATERMARKS_TABLE, StateStore
from shared.sync.storage import StorageAccount

BULK_SIZE = 1_000
BULK_START = dt.datetime(2026, 11, 2, 10, 0, 0, 400_000, tzinfo=dt.UTC)
BULK_SPREAD = dt.timedelta(seconds=10)
EDIT_AT = BULK_START + dt.timedelta(minutes=5, seconds=5, microseconds=300_000)
POLL_MINUTES = 10
EDIT_BEFORE_MINUTE = 6


@dataclass
class Result:
    crm: str
    queued: int
    changed: int
    idle_per_minute: float
    failed_polls: int
    watermark_bytes: int
    seconds: float

    @property
    def per_record(self) -> float:
        return self.queued / self.changed


Write = Callable[[list[tuple[str | None, dict[str, Any], dt.datetime]]], list[str]]


@dataclass
class _Org:
    """One CRM simulator: a seller's bulk writes at given CRM times, and the CRM's field names."""

    write: Write
    name_field: str
    seed_values: dict[str, Any]
    sync_yes: dict[str, Any]
    edit_values: dict[str, Any]


def _salesforce_org(simulator: SalesforceSimulator) -> _Org:
    return _Org(
        lambda writes: write_salesforce(simulator, "Opportunity", writes),
        "Name",
        {"StageName": "Qualification", "CloseDate": "2026-12-31", "PCS_Sync_With_Partner_Center__c": False},
        {"PCS_Sync_With_Partner_Center__c": True},
        {"Description": "seller edit"},
    )


def _dataverse_org(simulator: DataverseSimulator) -> _Org:
    return _Org(
        lambda writes: write_dataverse(simulator, "opportunity", writes),
        "name",
        {"pcs_syncwithpartnercenter": False},
        {"pcs_syncwithpartnercenter": True},
        {"description": "seller edit"},
    )


def _queue_depth(storage: StorageAccount) -> int:
    return QueueProducer(storage).depth(SYNC_QUEUE)


def _watermark_bytes(storage: StorageAccount, crm: CrmPort) -> int:
    """Size of the stored poll watermark entity, by Table storage's own size formula (UTF-16 strings)."""
    entity = storage.table_client(WATERMARKS_TABLE).get_entity("watermark", polling.crm_watermark_name(crm))
    size = 4 + 2 * (len(entity["PartitionKey"]) + len(entity["RowKey"])) + 2
    for name, value in entity.items():
        if name in ("PartitionKey", "RowKey"):
            continue
        size += 8 + 2 * len(name) + (2 * len(value) + 4 if isinstance(value, str) else 8)
    return size


def run_scenario(name: str, crm: CrmPort, org: _Org, storage: StorageAccount) -> Result:
    state = StateStore(storage)
    producer = QueueProducer(storage)
    queue = storage.queue_client(SYNC_QUEUE)
    storage.ensure_queue(queue)
    queue.clear_messages()
    created = BULK_START - dt.timedelta(days=1)
    ids = org.write([(None, {**org.seed_values, org.name_field: f"Bulk {n}"}, created) for n in range(BULK_SIZE)])
    polling.poll_crm(crm, state, producer)  # the records exist, none syncs yet: sets the watermark
    queue.clear_messages()
    step = BULK_SPREAD / BULK_SIZE
    org.write([(record_id, org.sync_yes, BULK_START + step * index) for index, record_id in enumerate(ids)])
    started = time.monotonic()
    failed = 0
    idle_queued = 0
    for minute in range(1, POLL_MINUTES + 1):
        if minute == EDIT_BEFORE_MINUTE:
            org.write([(ids[BULK_SIZE // 2], org.edit_values, EDIT_AT)])
        before = _queue_depth(storage)
        try:
            polling.poll_crm(crm, state, producer)
        except Exception:  # the measured failure mode: a poll that raises (the timer logs it and runs again)
            failed += 1
        if minute > EDIT_BEFORE_MINUTE:
            idle_queued += _queue_depth(storage) - before
    seconds = time.monotonic() - started
    queued = _queue_depth(storage)
    idle_minutes = POLL_MINUTES - EDIT_BEFORE_MINUTE
    return Result(
        crm=name,
        queued=queued,
        changed=BULK_SIZE + 1,
        idle_per_minute=idle_queued / idle_minutes,
        failed_polls=failed,
        watermark_bytes=_watermark_bytes(storage, crm),
        seconds=seconds,
    )


def _settings(services: SandboxServices, azurite: Azurite, crm_kind: str) -> Any:
    return load_settings(
        {
            **services.app_settings(),
            "CRM_KIND": crm_kind,
            "AzureWebJobsStorage": azurite.connection_string,
            "PC_TOKEN_CACHE_KEY": credentials.TOKEN_CACHE_KEY,
        }
    )


def run() -> list[Result]:
    from shared.crm.dynamics import DynamicsCrm
    from shared.crm.salesforce import SalesforceAdapter

    azurite = start_azurite()
    services = start_all()
    try:
        storage = StorageAccount(connection_string=azurite.connection_string)
        salesforce = services.salesforce.simulator
        dataverse = services.dataverse.simulator
        assert isinstance(salesforce, SalesforceSimulator) and isinstance(dataverse, DataverseSimulator)
        results = [
            run_scenario(
                "Salesforce",
                SalesforceAdapter(_settings(services, azurite, "salesforce")),
                _salesforce_org(salesforce),
                storage,
            )
        ]
        dynamics = DynamicsCrm(_settings(services, azurite, "dynamics"))
        try:
            results.append(run_scenario("Dynamics 365", dynamics, _dataverse_org(dataverse), storage))
        finally:
            dynamics.http.close()
        return results
    finally:
        services.stop()
        azurite.stop()


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(results: list[Result]) -> str:
    lines = [
        f"### CRM poll after a bulk change of {BULK_SIZE:,} records ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"commit {_commit()}, {platform.node()} ({platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
        "| CRM | syncs queued per changed record (target 1.0) | idle-poll syncs per minute (target 0) "
        "| failed polls | watermark entity | poll time |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        lines.append(
            f"| {result.crm} | {result.per_record:.2f} ({result.queued:,} for {result.changed:,}) "
            f"| {result.idle_per_minute:,.1f} | {result.failed_polls} of {POLL_MINUTES} "
            f"| {result.watermark_bytes:,} bytes | {result.seconds:.1f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append", type=Path, help="also append the result to this Markdown file")
    arguments = parser.parse_args()
    text = report(run())
    print(text)
    if arguments.append:
        with arguments.append.open("a", encoding="utf-8") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
