"""Runs a table of cases written in JavaScript (`*_cases.cjs`, one node process for all of them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from sandbox.tls import ensure_ca

ROOT = Path(__file__).resolve().parents[2]
Outcome = dict[str, object]


def run_node_cases(script: str, cases: list[str], environment: dict[str, str]) -> dict[str, Outcome]:
    """{case: {"ok": bool, "detail": str}} as the script printed it; node trusts the sandbox CA."""
    node = shutil.which("node")
    assert node, "Node.js 20 is required (see README Prerequisites)"
    finished = subprocess.run(
        [node, str(Path(__file__).with_name(script)), *cases],
        cwd=ROOT,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(ensure_ca().cert_path), **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    results: dict[str, Outcome] = json.loads(finished.stdout)
    return results
