"""The files a newcomer and a user need exist, say what they must, and every local link in them resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "CONTRIBUTING.md", "SECURITY.md", "CHANGELOG.md", "infra/README.md", "docs/deploy.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_licence_is_mit_with_the_maintainers_copyright() -> None:
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License\n")
    assert re.search(r"^Copyright \(c\) \d{4} The Co-sell Sync maintainers$", licence, re.MULTILINE)
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in licence


def test_the_readme_links_the_four_project_files_and_states_the_licence() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = set(LINK.findall(readme))
    assert {"LICENSE", "CONTRIBUTING.md", "SECURITY.md", "CHANGELOG.md"} <= links
    assert "MIT licence" in readme


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_local_link_resolves(document: str) -> None:
    path = ROOT / document
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor in the same page
        linked = (path.parent / target.split("#")[0]).resolve()
        assert linked.exists(), f"{document} links {target}, which does not exist"
