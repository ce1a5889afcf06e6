"""The deployment package builds for the platform's Python and imports there, as a deploy would build it.

`azd deploy` (and `func azure functionapp publish`) upload this folder minus .funcignore; the remote
build then runs `pip install -r requirements.txt --target .python_packages/lib/site-packages` on
Linux x86-64 with the app's Python (infra/app/api.bicep `runtimeVersion`), and the worker imports
function_app with that folder and those packages on its path. We build the same package, restricted
to manylinux2014 wheels for that Python: a dependency that ships no such wheel would need a
compiler at build time, which is exactly the surprise this test exists to catch before a deploy.
Then a fresh interpreter that sees nothing but the copied app and those packages imports function_app.

The package is cached outside the repository under a key of requirements.txt and the build command,
so only a change of the pins pays for a new build.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_function_app import EXPECTED

ROOT = Path(__file__).resolve().parents[1]
SITE_PACKAGES = Path(".python_packages") / "lib" / "site-packages"


def platform_python() -> str:
    """The Python version the Function app runs on: one place, infra/app/api.bicep."""
    bicep = (ROOT / "infra" / "app" / "api.bicep").read_text(encoding="utf-8")
    match = re.search(r"^param runtimeVersion string = '(\d+\.\d+)'$", bicep, re.MULTILINE)
    assert match, "infra/app/api.bicep: param runtimeVersion not found"
    return match.group(1)


def build_command(target: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",  # the worker compiles on first import; saves time here
        "--target",
        str(target),
        "--requirement",
        str(ROOT / "requirements.txt"),
        "--platform",
        "manylinux2014_x86_64",
        "--implementation",
        "cp",
        "--python-version",
        platform_python(),
        "--only-binary=:all:",
    ]


def deployment_packages() -> Path:
    """site-packages as the remote build makes it, built once per requirements.txt and command."""
    key = hashlib.sha256()
    key.update((ROOT / "requirements.txt").read_bytes())
    key.update(" ".join(build_command(Path("TARGET"))[1:]).replace(str(ROOT), "").encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cosell-sync" / "deployment-package"
    packages = cache / key.hexdigest()[:16]
    if not packages.is_dir():
        building = cache / f"{packages.name}.building-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        result = subprocess.run(build_command(building), capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"pip could not build the deployment package:\n{result.stderr[-4000:]}"
        building.replace(packages)  # atomic: a half-built folder is never reused
    return packages


def deployed_files() -> list[Path]:
    """Files of this folder a deploy uploads: everything but what .funcignore names.

    Its patterns are names or globs without a slash, which (as in .gitignore) match a file or folder
    of that name at any depth; the first test keeps it so, so this reading stays exact.
    """
    patterns = funcignore_patterns()
    files: list[Path] = []
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if not any(fnmatch.fnmatch(name, p) for p in patterns)]
        files += [Path(folder, name) for name in names if not any(fnmatch.fnmatch(name, p) for p in patterns)]
    return files


def funcignore_patterns() -> list[str]:
    lines = (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_funcignore_holds_only_names_and_globs() -> None:
    for pattern in funcignore_patterns():
        assert "/" not in pattern and not pattern.startswith("!"), (
            f".funcignore: {pattern!r} needs a real gitignore reader"
        )


@pytest.mark.timeout(900)  # a cold build downloads and unpacks every wheel
def test_the_package_the_platform_builds_imports_every_function(tmp_path: Path) -> None:
    packages = deployment_packages()
    app = tmp_path / "wwwroot"
    for source in deployed_files():
        target = app / source.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    assert not (app / "tests").exists() and (app / "function_app.py").exists() and (app / "host.json").exists()
    (app / SITE_PACKAGES).parent.mkdir(parents=True)
    (app / SITE_PACKAGES).symlink_to(packages, target_is_directory=True)

    # -I -S: no environment variables, no user or venv site-packages; only what the worker would see.
    probe = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import function_app
import azure.functions
print(json.dumps({
    "functions": sorted(f.get_function_name() for f in function_app.app.get_functions()),
    "function_app": function_app.__file__,
    "azure_functions": azure.functions.__file__,
}))
"""
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, str(app), str(app / SITE_PACKAGES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"function_app does not import from the deployment package:\n{result.stderr}"
    imported = json.loads(result.stdout)
    assert imported["functions"] == sorted(EXPECTED)
    assert Path(imported["function_app"]).is_relative_to(app)
    assert Path(imported["azure_functions"]).is_relative_to(app / SITE_PACKAGES)


def test_this_interpreter_is_the_platform_python() -> None:
    # The import above proves the package only for the interpreter it ran in.
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == platform_python()
