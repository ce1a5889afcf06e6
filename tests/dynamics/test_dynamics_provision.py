"""`python -m shared dynamics provision` against a bare Dataverse simulator (no connector schema yet)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from sandbox.dataverse import DataverseSimulator
from sandbox.server import RunningServer
from shared.crm.dynamics import DynamicsCrm
from shared.crm.dynamics_commands import provision, register
from shared.crm.port import RecordUpdate
from shared.mapping.taxonomy import load
from tests.dynamics.test_dynamics_adapter import dynamics_settings
from tests.unit.test_cosell_fields_2026 import next_fiscal_year

WRITES = ("POST", "PUT", "PATCH", "DELETE")


def _writes(server: RunningServer) -> list[str]:
    return [
        f"{entry['method']} {entry['path']}" for entry in server.simulator.requests_log() if entry["method"] in WRITES
    ]


def test_provisioning_twice_changes_nothing_the_second_time(
    identity_server: RunningServer,
    bare_dataverse_server: RunningServer,
    dataverse_server: RunningServer,
    ca_bundle: str,
) -> None:
    settings = dynamics_settings(identity_server.url, bare_dataverse_server.url, ca_bundle)
    bare = bare_dataverse_server.simulator
    assert isinstance(bare, DataverseSimulator)

    check = io.StringIO()
    assert provision(settings, check, check=True) == 1
    assert "missing: create column opportunity.pcs_referralid (String)" in check.getvalue()
    assert _writes(bare_dataverse_server) == []

    first = io.StringIO()
    assert provision(settings, first, check=False) == 0
    writes_after_first = _writes(bare_dataverse_server)
    assert any("/EntityDefinitions(LogicalName='opportunity')/Attributes" in write for write in writes_after_first)
    assert any(write.endswith("/PublishXml") for write in writes_after_first)

    second = io.StringIO()
    assert provision(settings, second, check=False) == 0
    assert "nothing to do" in second.getvalue()
    assert _writes(bare_dataverse_server) == writes_after_first  # the second run wrote nothing
    assert provision(settings, io.StringIO(), check=True) == 0

    # The org now has what a pre-provisioned org has: same columns, keys and navigation properties.
    reference = dataverse_server.simulator
    assert isinstance(reference, DataverseSimulator)
    for name, table in reference.tables.items():
        assert set(bare.tables[name].columns) == set(table.columns), name
        assert set(bare.tables[name].keys) == set(table.keys), name
        assert set(bare.tables[name].collections) == set(table.collections), name
        for column_name, column in table.columns.items():
            assert bare.tables[name].columns[column_name].type == column.type, (name, column_name)
            assert bare.tables[name].columns[column_name].options == column.options, (name, column_name)

    # ...and the adapter works on it: upsert by the new alternate key, solutions through the new lookup.
    crm = DynamicsCrm(settings)
    ref = crm.upsert_by_referral_id("opportunity", "ref-provisioned", RecordUpdate(name="After provisioning")).ref
    assert crm.read(ref).connector.referral_id == "ref-provisioned"
    crm.http.close()


def test_provisioning_enables_change_tracking_when_the_setting_asks(
    identity_server: RunningServer, bare_dataverse_server: RunningServer, ca_bundle: str
) -> None:
    settings = dynamics_settings(
        identity_server.url, bare_dataverse_server.url, ca_bundle, DATAVERSE_CHANGE_TRACKING="true"
    )
    assert provision(settings, io.StringIO(), check=False) == 0
    bare = bare_dataverse_server.simulator
    assert isinstance(bare, DataverseSimulator)
    assert all(bare.tables[name].change_tracking for name in ("opportunity", "lead", "pcs_partnercentersolution"))
    assert provision(settings, io.StringIO(), check=True) == 0


def test_a_column_of_the_wrong_type_is_reported_not_changed(
    identity_server: RunningServer, dataverse_server: RunningServer, ca_bundle: str, dataverse: DataverseSimulator
) -> None:
    with dataverse.lock:
        dataverse.tables["lead"].columns["pcs_audit"].type = "String"
    out = io.StringIO()
    assert provision(dynamics_settings(identity_server.url, dataverse_server.url, ca_bundle), out, check=False) == 1
    assert "lead.pcs_audit is a String, the schema wants Memo" in out.getvalue()


def test_register_adds_the_dynamics_command_group() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    arguments = parser.parse_args(["dynamics", "provision", "--check"])
    assert arguments.check is True
    assert callable(arguments.handler)


def test_a_new_taxonomy_file_adds_its_choices_by_provisioning_alone(
    identity_server: RunningServer, bare_dataverse_server: RunningServer, ca_bundle: str, tmp_path: Path
) -> None:
    settings = dynamics_settings(identity_server.url, bare_dataverse_server.url, ca_bundle)
    assert provision(settings, io.StringIO(), check=False) == 0
    bare = bare_dataverse_server.simulator
    assert isinstance(bare, DataverseSimulator)
    before = dict(bare.tables["opportunity"].columns["pcs_solutionarea"].options)
    assert "Security" in before.values() and "Modern Work" in before.values()  # retired: still readable

    fy27 = load(next_fiscal_year(tmp_path))
    report = io.StringIO()
    assert provision(settings, report, check=True, values=fy27) == 1
    assert "add option 'Security and Identity'" in report.getvalue()
    assert provision(settings, io.StringIO(), check=False, values=fy27) == 0
    after = bare.tables["opportunity"].columns["pcs_solutionarea"].options
    assert {value: after[value] for value in before} == before  # no existing option renumbered or dropped
    assert "Security and Identity" in after.values()
    assert "Identity First" in bare.tables["lead"].columns["pcs_solutionplay"].options.values()
    assert provision(settings, io.StringIO(), check=True, values=fy27) == 0
