"""Start and stop a real Azurite (the Azure Storage emulator from npm) for tests and `make run`."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shared.settings import azurite_connection_string

PROJECT_ROOT = Path(__file__).resolve().parents[1]
AZURITE_BIN = PROJECT_ROOT / "node_modules" / ".bin" / "azurite"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Azurite exited early with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"Azurite did not listen on port {port} in time")


@dataclass
class Azurite:
    process: subprocess.Popen[bytes]
    blob_port: int
    queue_port: int
    table_port: int
    location: Path
    owns_location: bool

    @property
    def connection_string(self) -> str:
        return azurite_connection_string(self.blob_port, self.queue_port, self.table_port)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.owns_location:
            shutil.rmtree(self.location, ignore_errors=True)


def start_azurite(
    *,
    blob_port: int | None = None,
    queue_port: int | None = None,
    table_port: int | None = None,
    location: Path | None = None,
    in_memory: bool = True,
    timeout: float = 60.0,
) -> Azurite:
    """Start Azurite (from `npm ci`'s node_modules) and wait until all three services listen."""
    if not AZURITE_BIN.exists():
        raise FileNotFoundError(f"{AZURITE_BIN} is missing: run `make setup` (it runs `npm ci`)")
    ports = (blob_port or free_port(), queue_port or free_port(), table_port or free_port())
    owns_location = location is None
    workdir = location or Path(tempfile.mkdtemp(prefix="azurite-"))
    workdir.mkdir(parents=True, exist_ok=True)
    command = [
        str(AZURITE_BIN),
        "--silent",
        "--skipApiVersionCheck",
        "--disableProductStyleUrl",
        "--disableTelemetry",
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(ports[0]),
        "--queueHost",
        "127.0.0.1",
        "--queuePort",
        str(ports[1]),
        "--tableHost",
        "127.0.0.1",
        "--tablePort",
        str(ports[2]),
    ]
    # Azurite refuses --location together with --inMemoryPersistence.
    command += ["--inMemoryPersistence"] if in_memory else ["--location", str(workdir)]
    log = open(workdir / "azurite.log", "ab")  # noqa: SIM115 - closed when the process ends
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    deadline = time.monotonic() + timeout
    try:
        for port in ports:
            _wait_for_port(port, process, deadline)
    except BaseException:
        process.kill()
        raise
    return Azurite(process, *ports, location=workdir, owns_location=owns_location)
