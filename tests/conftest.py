"""Session fixtures: a real Azurite on free ports, and a private sandbox folder for generated certificates."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sandbox import credentials
from sandbox.azurite import Azurite, start_azurite
from sandbox.simulators import SandboxServices
from shared.settings import Settings, load_settings
from shared.sync.storage import StorageAccount

# Generated sandbox material (CA, certificates) goes to a per-run folder, never the developer's .sandbox/.
_SESSION_SANDBOX = Path(
    os.environ.setdefault("SANDBOX_DIR", str(Path(__file__).resolve().parent.parent / ".sandbox" / "test"))
)

SANDBOX_TOKEN_CACHE_KEY = credentials.TOKEN_CACHE_KEY


def running_azurite() -> Iterator[Azurite]:
    """A real Azurite (in-memory, free ports) until the generator is closed."""
    server = start_azurite()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One real Azurite for the whole test session; stopped at the end."""
    yield from running_azurite()


@pytest.fixture(scope="session")
def storage(azurite: Azurite) -> StorageAccount:
    return StorageAccount(connection_string=azurite.connection_string)


def base_environment(connection_string: str, **overrides: str) -> dict[str, str]:
    """A complete, valid set of app settings for the sandbox (Salesforce CRM by default)."""
    environment = {
        "CRM_KIND": "salesforce",
        "AzureWebJobsStorage": connection_string,
        "PC_TENANT_ID": "sandbox-tenant",
        "PC_CLIENT_ID": "sandbox-pc-client",
        "PC_CLIENT_SECRET": "sandbox-pc-secret",
        "PC_TOKEN_CACHE_KEY": SANDBOX_TOKEN_CACHE_KEY,
        "SALESFORCE_CLIENT_ID": "sandbox-sf-client",
        "SALESFORCE_CLIENT_SECRET": "sandbox-sf-secret",
    }
    environment.update(overrides)
    return environment


@pytest.fixture
def settings(azurite: Azurite) -> Settings:
    return load_settings(base_environment(azurite.connection_string))


@pytest.fixture
def app_environment(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Process environment of a running Function app (as the host gives it), for e2e tests."""
    from shared import bootstrap

    environment = base_environment(azurite.connection_string, SANDBOX_FUNCTION_KEY=credentials.FUNCTION_KEY)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    yield environment
    bootstrap.reset()


@pytest.fixture
def empty_sync_queues(storage: StorageAccount) -> None:
    """Tests share one Azurite: start from empty `sync` queues."""
    from shared.sync.queues import SYNC_POISON_QUEUE, SYNC_QUEUE

    for name in (SYNC_QUEUE, SYNC_POISON_QUEUE):
        client = storage.queue_client(name)
        storage.ensure_queue(client)
        client.clear_messages()


@pytest.fixture(scope="session")
def sandbox_services() -> Iterator[SandboxServices]:
    """Every simulator (identity, Partner Center, Salesforce, Dataverse) on free ports."""
    from sandbox.simulators import start_all

    services = start_all()
    try:
        yield services
    finally:
        services.stop()


# ---- traces -----------------------------------------------------------------------------------------
class Recorder(SimpleSpanProcessor):
    """Keeps finished spans only while a test records, so the rest of the session costs no memory."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        super().__init__(exporter)
        self.exporter = exporter
        self.recording = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.recording:
            super().on_end(span)

    def spans(self) -> Sequence[ReadableSpan]:
        return self.exporter.get_finished_spans()


@pytest.fixture(scope="session")
def recorder() -> Recorder:
    provider = TracerProvider()
    processor = Recorder(InMemorySpanExporter())
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)  # once per process; instrumented clients pick it up
    if trace.get_tracer_provider() is not provider:
        pytest.fail("another tracer provider was installed before; these tests need their own")
    return processor


@pytest.fixture
def spans(recorder: Recorder) -> Iterator[Recorder]:
    recorder.exporter.clear()
    recorder.recording = True
    yield recorder
    recorder.recording = False
    recorder.exporter.clear()
