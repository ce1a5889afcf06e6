"""checkov passes every resource declared in infra/, and would fail a new one that is not safe.

The Bicep CLI cannot run here, so static analysis is the check we can give before `azd up`. One
checkov run (offline, from the tools venv `make test` sets up) scans infra/ as `.checkov.yaml` says,
plus a fixture vault that must fail: so the test proves it can fail, for the cost of one start.
Every skip in the Bicep must carry its reason. checkov's Bicep parser (pycep) cannot read every
file: those are listed below with the reason and may declare only the resources listed with them,
so a resource added there cannot slip past the scan.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
FIXTURE = Path(__file__).resolve().parent / "checkov_fixture"
CONFIG = ROOT / ".checkov.yaml"

# Files checkov's Bicep parser cannot read (it reports a parsing error and scans nothing in them),
# with why, and the only resource types they may declare. None of these types has a checkov check.
UNPARSED: dict[str, tuple[str, set[str]]] = {
    "main.bicep": (
        "user-defined functions (`func`) and deployer(); its resources are modules, scanned in their own files",
        {"Microsoft.Resources/resourceGroups"},
    ),
    "app/rbac.bicep": (
        "lambdas (`map`) and multi-line conditionals",
        {
            "Microsoft.Authorization/roleAssignments",
            # `existing` references: nothing is deployed by them.
            "Microsoft.Storage/storageAccounts",
            "Microsoft.KeyVault/vaults",
            "Microsoft.Insights/components",
        },
    ),
}
NO_REASON = "No comment provided"  # what checkov reports for `// checkov:skip=CKV_X` without a reason


NEW_FILE = "app/zz_new_unsafe_vault.bicep"  # where the fixture lands in the scanned copy of infra/


@dataclass(frozen=True)
class Scan:
    """checkov's findings by kind (`failed_checks`, ...), each with `file` relative to infra/."""

    checks: dict[str, list[dict[str, Any]]]
    unparsed: set[str]

    def of(self, kind: str, *, new_file: bool = False) -> list[dict[str, Any]]:
        return [check for check in self.checks.get(kind, []) if (check["file"] == NEW_FILE) == new_file]


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Scan:
    """checkov's report on a copy of infra/ to which a new file with an unsafe vault was added."""
    if not CHECKOV.exists():
        pytest.fail("checkov is not installed: run `make tools` (make test and make lint do it)")
    scanned = tmp_path_factory.mktemp("checkov") / "infra"
    shutil.copytree(INFRA, scanned)
    shutil.copy(FIXTURE / "unsafe_vault.bicep", scanned / NEW_FILE)
    result = subprocess.run(
        # The directory given here replaces the config's (infra/); everything else comes from the config.
        [str(CHECKOV), "--config-file", str(CONFIG), "-d", str(scanned), "-o", "json"],
        cwd=ROOT,
        # Offline: no PyPI look-up for a newer checkov (.checkov.yaml already skips platform downloads).
        env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode in (0, 1), f"checkov crashed:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    assert report["check_type"] == "bicep"
    results = report["results"]
    checks = {kind: entries for kind, entries in results.items() if kind != "parsing_errors"}
    for entry in (entry for entries in checks.values() for entry in entries):
        entry["file"] = Path(entry["file_abs_path"]).relative_to(scanned).as_posix()
    unparsed = {Path(path).relative_to(scanned).as_posix() for path in results.get("parsing_errors", [])}
    return Scan(checks=checks, unparsed=unparsed)


def test_the_config_scans_infra_as_bicep_offline() -> None:
    config = CONFIG.read_text(encoding="utf-8")
    for line in ("directory:\n  - infra\n", "framework:\n  - bicep\n", "skip-download: true\n"):
        assert line in config, f".checkov.yaml lost {line!r}"


def test_no_resource_in_infra_fails_a_check(scan: Scan) -> None:
    failed = [
        f"{check['check_id']} {check['resource']} (infra/{check['file']}): {check['check_name']}"
        for check in scan.of("failed_checks")
    ]
    assert not failed, "fix these in the Bicep, or skip each with `// checkov:skip=ID: reason`:\n" + "\n".join(failed)
    assert scan.of("passed_checks"), "checkov passed nothing in infra/: did it scan it?"


def test_every_skip_in_infra_says_why(scan: Scan) -> None:
    for check in scan.of("skipped_checks"):
        reason = (check["check_result"].get("suppress_comment") or "").strip()
        assert reason and reason != NO_REASON and len(reason) >= 20, f"{check['check_id']} is skipped without a reason"


def test_a_new_file_with_an_unsafe_resource_fails(scan: Scan) -> None:
    failed = {check["check_id"] for check in scan.of("failed_checks", new_file=True)}
    # The vault of the fixture: no purge protection, firewall open, public access.
    assert {"CKV_AZURE_110", "CKV_AZURE_109", "CKV_AZURE_189"} <= failed


def test_checkov_reads_every_bicep_file_except_the_listed_ones(scan: Scan) -> None:
    unparsed = scan.unparsed
    assert unparsed == set(UNPARSED), (
        f"checkov cannot parse {sorted(unparsed - set(UNPARSED))}: write it in syntax checkov reads, or list it "
        f"in UNPARSED with the reason; listed but parsed now: {sorted(set(UNPARSED) - unparsed)}"
    )
    everything = {path.relative_to(INFRA).as_posix() for path in INFRA.rglob("*.bicep")}
    assert unparsed <= everything


RESOURCE = re.compile(r"^resource\s+\w+\s+'([^'@]+)@", re.MULTILINE)


@pytest.mark.parametrize("name", sorted(UNPARSED))
def test_files_checkov_cannot_parse_declare_only_their_listed_resources(name: str) -> None:
    reason, allowed = UNPARSED[name]
    declared = set(RESOURCE.findall((INFRA / name).read_text(encoding="utf-8")))
    assert declared <= allowed, (
        f"infra/{name} declares {sorted(declared - allowed)}, but checkov cannot scan that file ({reason}): "
        "declare the resource in a module under infra/app/ that checkov reads"
    )
    assert declared, f"infra/{name} declares no resource any more: remove it from UNPARSED"


def test_what_the_key_vault_skips_rely_on_holds() -> None:
    vault = (INFRA / "app" / "keyvault.bicep").read_text(encoding="utf-8")
    main = (INFRA / "main.bicep").read_text(encoding="utf-8")
    assert "param purgeProtection bool = true" in vault and "param keyVaultPurgeProtection bool = true" in main
    assert "enableSoftDelete: true" in vault and "softDeleteRetentionInDays: 90" in vault
    assert "enableRbacAuthorization: true" in vault
    assert "defaultAction: 'Deny'" in vault and "bypass: 'None'" in vault
    assert "virtualNetworkSubnetId: network.outputs.appSubnetId" in main, (
        "the app must join the subnet the vault admits"
    )
