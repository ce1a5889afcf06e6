"""One version: shared/__init__.py defines it; the health endpoint, pyproject.toml and CHANGELOG.md agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from shared import __version__
from shared.admin.health import HealthReport

ROOT = Path(__file__).resolve().parents[1]
CHANGELOG = ROOT / "CHANGELOG.md"
SEMVER = re.compile(r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?")


def _releases() -> list[str]:
    """Versions of CHANGELOG.md's release headings (`## [x.y.z] - YYYY-MM-DD`), newest first."""
    return re.findall(r"^## \[(\S+)\] - \d{4}-\d{2}-\d{2}$", CHANGELOG.read_text(encoding="utf-8"), re.MULTILINE)


def test_the_version_is_semantic() -> None:
    assert SEMVER.fullmatch(__version__), __version__


def test_the_latest_changelog_release_is_this_version() -> None:
    releases = _releases()
    assert releases, "CHANGELOG.md has no `## [x.y.z] - YYYY-MM-DD` release heading"
    assert releases[0] == __version__, (
        f"CHANGELOG.md's latest release is {releases[0]}, shared.__version__ is {__version__}"
    )
    assert len(releases) == len(set(releases)), "a version is released twice in CHANGELOG.md"


def test_the_changelog_keeps_an_unreleased_section_on_top() -> None:
    headings = re.findall(r"^## .*$", CHANGELOG.read_text(encoding="utf-8"), re.MULTILINE)
    assert headings[0] == "## [Unreleased]"


def test_pyproject_reads_the_version_instead_of_stating_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "shared.__version__"}


def test_the_health_endpoint_reports_it() -> None:
    assert HealthReport(healthy=True).public_body() == {"status": "ok", "version": __version__}


def test_no_other_file_states_the_version() -> None:
    # azd's template metadata may name the template, not a second copy of the version.
    for name in ("azure.yaml", "pyproject.toml", "host.json", "package.json"):
        assert __version__ not in (ROOT / name).read_text(encoding="utf-8"), f"{name} repeats the version"
