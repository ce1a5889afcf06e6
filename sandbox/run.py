"""`make run`: the whole system in sandbox mode on one machine.

Starts Azurite (data under .sandbox/azurite), the simulators on their stable ports (identity 7100,
Partner Center 7101, Salesforce 7102, Dataverse 7103), seeds demo data, registers the host's
webhook URL with the Partner Center simulator, and runs the local Functions host on 7071, then
stays in the foreground until Ctrl-C and stops everything it started.
`--no-host` leaves the host out, for running the app under `func start` instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from sandbox import credentials
from sandbox.azurite import Azurite, start_azurite
from sandbox.server import RunningServer
from sandbox.tls import ensure_ca
from shared.settings import apply_local_settings_file

log = logging.getLogger("sandbox.run")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCAL_SETTINGS = PROJECT_ROOT / "local.settings.json"
SAMPLE_SETTINGS = PROJECT_ROOT / "local.settings.sample.json"


def ensure_local_settings() -> None:
    if not LOCAL_SETTINGS.exists():
        shutil.copyfile(SAMPLE_SETTINGS, LOCAL_SETTINGS)
        log.info("created local.settings.json from local.settings.sample.json (sandbox values)")


def start_simulators() -> list[RunningServer]:
    """Every simulator on its stable sandbox port, seeded with demo data."""
    from sandbox.simulators import start_all

    services = start_all(
        identity_port=credentials.IDENTITY_PORT,
        partner_center_port=credentials.PARTNER_CENTER_PORT,
        salesforce_port=credentials.SALESFORCE_PORT,
        dataverse_port=credentials.DATAVERSE_PORT,
        demo_data=True,
    )
    return services.all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.run", description=__doc__.splitlines()[0])
    parser.add_argument("--no-host", action="store_true", help="do not run the local Functions host (use `func start`)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every HTTP request at INFO

    ensure_local_settings()
    apply_local_settings_file(LOCAL_SETTINGS)
    ensure_ca(PROJECT_ROOT / ".sandbox")

    # The simulators keep their records in memory, so sync state from an earlier run would point at
    # records that no longer exist: start Azurite empty too (the folder stays for inspection after a run).
    shutil.rmtree(PROJECT_ROOT / ".sandbox" / "azurite", ignore_errors=True)
    stops: list[Callable[[], None]] = []
    try:
        azurite: Azurite = start_azurite(
            blob_port=10000,
            queue_port=10001,
            table_port=10002,
            location=PROJECT_ROOT / ".sandbox" / "azurite",
            in_memory=False,
        )
        stops.append(azurite.stop)
        log.info("Azurite on 127.0.0.1:10000-10002 (data in .sandbox/azurite)")

        for server in start_simulators():
            stops.append(server.stop)
            log.info("%s simulator on %s", server.simulator.name, server.url)

        if not arguments.no_host:
            from sandbox.demo import after_host_started
            from sandbox.host import build_host

            host = build_host(port=credentials.HOST_PORT, local_settings=LOCAL_SETTINGS)
            host.start()
            stops.append(host.stop)
            after_host_started(host.url)
            print(
                f"\nCo-sell Sync is running in sandbox mode.\n"
                f"  status page:   {host.url}/api/status?code={credentials.FUNCTION_KEY}\n"
                f"  health:        {host.url}/api/health\n"
                f"  details:       {host.url}/api/health/details?code={credentials.FUNCTION_KEY}\n"
                f"  simulators:    identity :{credentials.IDENTITY_PORT}, Partner Center :{credentials.PARTNER_CENTER_PORT}, "
                f"Salesforce :{credentials.SALESFORCE_PORT}, Dataverse :{credentials.DATAVERSE_PORT} "
                f"(GET /_sandbox/state on each)\n"
                f"Press Ctrl-C to stop.\n",
                flush=True,
            )
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        with contextlib.suppress(KeyboardInterrupt):
            stopped.wait()
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception:  # keep stopping the rest; say what failed
                log.exception("stopping a sandbox component failed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
