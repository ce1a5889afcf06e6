"""`make lint` and pre-commit run the same tools from the same pinned installs, and nothing is downloaded."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS_PYTHON = ROOT / ".venv-tools" / "bin" / "python"
MAKE_VARIABLES = {"$(VENV)": ".venv", "$(TOOLS_VENV)": ".venv-tools"}


def _recipe(target: str) -> list[str]:
    """Commands of a Makefile target, its variables for the two venvs expanded."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert match, f"Makefile has no {target} target"
    commands = [line.strip() for line in match.group(1).splitlines()]
    for variable, value in MAKE_VARIABLES.items():
        commands = [command.replace(variable, value) for command in commands]
    return commands


@pytest.fixture(scope="module")
def hooks() -> list[dict[str, Any]]:
    if not TOOLS_PYTHON.exists():
        pytest.fail("pre-commit is not installed: run `make tools` (make test and make lint do it)")
    config = ROOT / ".pre-commit-config.yaml"
    validate = subprocess.run(
        [str(TOOLS_PYTHON), "-m", "pre_commit", "validate-config", str(config)], capture_output=True, text=True
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr
    # The tools venv has PyYAML (a pre-commit dependency); the app's venv does not need it.
    dump = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
    loaded = json.loads(
        subprocess.run([str(TOOLS_PYTHON), "-c", dump, str(config)], capture_output=True, check=True).stdout
    )
    assert [repo["repo"] for repo in loaded["repos"]] == ["local"], (
        "hooks must be local: no hook repository to download"
    )
    found: list[dict[str, Any]] = loaded["repos"][0]["hooks"]
    return found


def test_every_hook_runs_an_installed_tool_of_ours(hooks: list[dict[str, Any]]) -> None:
    for hook in hooks:
        assert hook["language"] == "unsupported", f"{hook['id']}: a managed language would install its own copy"
        executable = hook["entry"].split()[0]
        assert executable.startswith((".venv/bin/", ".venv-tools/bin/")) or executable == "make", hook["entry"]


def test_lint_and_pre_commit_run_the_same_tools(hooks: list[dict[str, Any]]) -> None:
    lint = _recipe("lint")
    entries = {hook["id"]: hook["entry"] for hook in hooks}
    lint_tools = {command.split()[0] for command in lint}
    hook_tools = {entry.split()[0] for entry in entries.values() if entry.split()[0] != "make"}
    # Everything lint runs, pre-commit runs, from the same install (plus the settings drift test).
    assert lint_tools - {".venv-tools/bin/checkov"} <= hook_tools
    assert entries["checkov"] == "make --no-print-directory checkov"
    assert _recipe("checkov") == [command for command in lint if command.startswith(".venv-tools/bin/checkov")]
    assert {"ruff-check", "ruff-format", "mypy", "settings-drift", "checkov"} <= set(entries)


def test_the_tools_are_pinned() -> None:
    for name in ("requirements-tools.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
            requirement = line.split("#")[0].strip()
            if requirement and not requirement.startswith("-r"):
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", requirement), (
                    f"{name}: {requirement} is not pinned"
                )
