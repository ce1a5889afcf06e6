"""All sandbox simulators together: identity, Partner Center, Salesforce and Dataverse.

`make run` starts them on their stable ports (sandbox/credentials.py); tests and benchmarks start
them on free ports (port 0) and point the app at them with `app_settings()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox import credentials
from sandbox.dataverse import DataverseSimulator, dataverse_factory, seed_demo_data
from sandbox.identity import identity_factory
from sandbox.partner_center import partner_center_factory
from sandbox.salesforce import SalesforceSimulator, seed_demo
from sandbox.server import RunningServer, serve
from sandbox.tls import ensure_ca


@dataclass
class SandboxServices:
    identity: RunningServer
    partner_center: RunningServer
    salesforce: RunningServer
    dataverse: RunningServer

    def all(self) -> list[RunningServer]:
        return [self.identity, self.partner_center, self.salesforce, self.dataverse]

    def stop(self) -> None:
        for server in reversed(self.all()):
            server.stop()

    def app_settings(self) -> dict[str, str]:
        """App settings that point the Function app at these simulators (sandbox credentials)."""
        ca = str(ensure_ca().cert_path)
        return {
            "TLS_CA_BUNDLE": ca,
            "PC_AUTHORITY_HOST": self.identity.url,
            "PC_TENANT_ID": credentials.TENANT_ID,
            "PC_CLIENT_ID": credentials.PC_CLIENT_ID,
            "PC_CLIENT_SECRET": credentials.PC_CLIENT_SECRET,
            "PC_API_BASE_URL": f"{self.partner_center.url}/v1.0/engagements",
            "PC_WEBHOOK_API_BASE_URL": f"{self.partner_center.url}/webhooks/v1",
            "PC_WEBHOOK_CERT_HOSTS": self.partner_center.url.removeprefix("https://"),
            "PC_WEBHOOK_TRUSTED_ROOTS": ca,
            "SALESFORCE_LOGIN_URL": self.salesforce.url,
            "SALESFORCE_CLIENT_ID": credentials.SALESFORCE_CLIENT_ID,
            "SALESFORCE_CLIENT_SECRET": credentials.SALESFORCE_CLIENT_SECRET,
            "DATAVERSE_URL": self.dataverse.url,
            "DATAVERSE_TENANT_ID": credentials.TENANT_ID,
            "DATAVERSE_CLIENT_ID": credentials.DATAVERSE_CLIENT_ID,
            "DATAVERSE_CLIENT_SECRET": credentials.DATAVERSE_CLIENT_SECRET,
            "DATAVERSE_AUTHORITY_HOST": self.identity.url,
        }


def start_all(
    *,
    identity_port: int = 0,
    partner_center_port: int = 0,
    salesforce_port: int = 0,
    dataverse_port: int = 0,
    demo_data: bool = False,
) -> SandboxServices:
    """Start every simulator (port 0 = a free port); with `demo_data`, seed the CRMs for a demo."""
    ensure_ca()
    started: list[RunningServer] = []
    try:
        # A 1 s device-code polling interval keeps the sandbox sign-in quick (Entra uses 5 s).
        started.append(serve(identity_factory(device_code_interval_seconds=1), port=identity_port))
        started.append(serve(partner_center_factory(), port=partner_center_port))
        started.append(serve(lambda url: SalesforceSimulator(url), port=salesforce_port))
        started.append(serve(dataverse_factory(), port=dataverse_port))
    except BaseException:
        for server in started:
            server.stop()
        raise
    services = SandboxServices(*started)
    if demo_data:
        salesforce = services.salesforce.simulator
        dataverse = services.dataverse.simulator
        assert isinstance(salesforce, SalesforceSimulator) and isinstance(dataverse, DataverseSimulator)
        seed_demo(salesforce)
        seed_demo_data(dataverse)
    return services
