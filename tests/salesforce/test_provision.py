"""`python -m shared salesforce provision` against a fresh simulated org: creates everything, then nothing."""

from __future__ import annotations

import io
from pathlib import Path

from sandbox.server import RunningServer
from shared.crm.salesforce_commands import provision, register
from shared.crm.salesforce_schema import load_objects
from shared.mapping.taxonomy import load
from tests.salesforce.conftest import adapter_settings, make_adapter, simulator
from tests.unit.test_cosell_fields_2026 import next_fiscal_year

WRITES = ("POST", "PATCH", "PUT", "DELETE")


def _writes(server: RunningServer) -> list[str]:
    return [
        f"{e['method']} {e['path']}"
        for e in simulator(server).requests_log()
        if e["method"] in WRITES and "oauth2" not in e["path"]
    ]


def test_provision_twice_changes_nothing_the_second_time(fresh_org_server: RunningServer) -> None:
    settings = adapter_settings(fresh_org_server)
    check_before = io.StringIO()
    assert provision(settings, check_before, check=True, adapter=make_adapter(fresh_org_server)) == 1
    assert "create   CustomField Opportunity.PCS_Referral_Id__c" in check_before.getvalue()
    assert _writes(fresh_org_server) == []  # --check writes nothing

    first = io.StringIO()
    assert provision(settings, first, adapter=make_adapter(fresh_org_server)) == 0, first.getvalue()
    writes_after_first = len(_writes(fresh_org_server))
    expected_fields = sum(len(spec.fields) for spec in load_objects())
    assert writes_after_first >= expected_fields + 2  # objects, fields, permission set, permissions, assignment

    second = io.StringIO()
    assert provision(settings, second, adapter=make_adapter(fresh_org_server)) == 0
    assert "nothing to do" in second.getvalue()
    assert len(_writes(fresh_org_server)) == writes_after_first
    assert provision(settings, io.StringIO(), check=True, adapter=make_adapter(fresh_org_server)) == 0

    sim = simulator(fresh_org_server)
    with sim.lock:
        referral = sim.objects["Opportunity"].field("PCS_Referral_Id__c")
        assert referral is not None and referral.external_id and referral.unique
        assignments = list(sim.records["PermissionSetAssignment"].values())
        assert [a["AssigneeId"] for a in assignments] == [sim.integration_user_id]


def test_provision_updates_a_drifted_field(fresh_org_server: RunningServer) -> None:
    settings = adapter_settings(fresh_org_server)
    assert provision(settings, io.StringIO(), adapter=make_adapter(fresh_org_server)) == 0
    sim = simulator(fresh_org_server)
    with sim.lock:
        help_needed = sim.objects["Opportunity"].field("PCS_Help_Needed__c")
        assert help_needed is not None
        help_needed.picklist = help_needed.picklist[:2]  # an admin removed values in Setup
    report = io.StringIO()
    assert provision(settings, report, check=True, adapter=make_adapter(fresh_org_server)) == 1
    assert "update   CustomField Opportunity.PCS_Help_Needed__c: picklist values" in report.getvalue()
    assert provision(settings, io.StringIO(), adapter=make_adapter(fresh_org_server)) == 0
    assert provision(settings, io.StringIO(), check=True, adapter=make_adapter(fresh_org_server)) == 0


def test_the_simulators_preprovisioned_org_matches_the_command(sf_server: RunningServer) -> None:
    report = io.StringIO()
    assert provision(adapter_settings(sf_server), report, check=True, adapter=make_adapter(sf_server)) == 0, (
        report.getvalue()
    )


def test_register_adds_the_command_group() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    arguments = parser.parse_args(["salesforce", "provision", "--check"])
    assert arguments.check is True and callable(arguments.handler)


def test_a_new_taxonomy_file_updates_the_picklists_by_provisioning_alone(
    fresh_org_server: RunningServer, tmp_path: Path
) -> None:
    settings = adapter_settings(fresh_org_server)
    assert provision(settings, io.StringIO(), adapter=make_adapter(fresh_org_server)) == 0
    sim = simulator(fresh_org_server)
    with sim.lock:
        area = sim.objects["Opportunity"].field("PCS_Solution_Area__c")
        assert area is not None and area.picklist == ["AI Business Solutions", "Cloud and AI Platforms", "Security"]

    fy27 = load(next_fiscal_year(tmp_path))
    report = io.StringIO()
    assert provision(settings, report, check=True, adapter=make_adapter(fresh_org_server), values=fy27) == 1
    assert "update   CustomField Opportunity.PCS_Solution_Area__c: picklist values" in report.getvalue()
    assert "update   CustomField Lead.PCS_Partner_Role__c: picklist values" in report.getvalue()
    assert provision(settings, io.StringIO(), adapter=make_adapter(fresh_org_server), values=fy27) == 0
    with sim.lock:
        area = sim.objects["Opportunity"].field("PCS_Solution_Area__c")
        role = sim.objects["Lead"].field("PCS_Partner_Role__c")
        assert area is not None and "Security and Identity" in area.picklist and "Security" not in area.picklist
        assert role is not None and "Licensing" not in role.picklist  # retired: deactivated, not offered
    assert provision(settings, io.StringIO(), check=True, adapter=make_adapter(fresh_org_server), values=fy27) == 0
