"""A real browser for the tests: Debian's Chromium driven by playwright-core (npm) through driver.mjs.

`Browser` keeps one Node process (and one Chromium) alive and sends it one JSON command per line.
A missing Chromium or Node module fails the test with what to install: the page is a feature.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "driver.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / ".sandbox" / "test"


class BrowserError(AssertionError):
    """The browser could not do what a test asked."""


class Browser:
    def __init__(self) -> None:
        if not Path(CHROMIUM).exists():
            raise BrowserError(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (README)")
        if not (ROOT / "node_modules" / "playwright-core").is_dir():
            raise BrowserError("node_modules/playwright-core is missing: run `make setup`")
        node = shutil.which("node")
        if node is None:
            raise BrowserError("node is missing: install Node.js 20 (README)")
        self._process = subprocess.Popen(
            [node, str(DRIVER)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CHROMIUM": CHROMIUM},
        )

    def command(self, op: str, **arguments: Any) -> dict[str, Any]:
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            error = process.stderr.read() if process.stderr else ""
            raise BrowserError(f"the browser driver stopped: {error.strip()[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise BrowserError(f"browser {op} failed: {answer.get('error')}")
        return answer

    def goto(self, url: str) -> int:
        return int(self.command("goto", url=url)["status"])

    def text(self, selector: str) -> str | None:
        value = self.command("text", selector=selector)["text"]
        return None if value is None else str(value)

    def count(self, selector: str) -> int:
        return int(self.command("count", selector=selector)["count"])

    def wait_for_text(self, selector: str, contains: str, *, timeout: float) -> dict[str, Any]:
        return self.command("waitText", selector=selector, contains=contains, absent=False, timeout=timeout * 1000)

    def wait_until_gone(self, selector: str, *, timeout: float) -> dict[str, Any]:
        return self.command("waitText", selector=selector, contains="", absent=True, timeout=timeout * 1000)

    def submit_form(self, button: str) -> int:
        """Press a form's submit button; the HTTP status of the POST's answer."""
        return int(self.command("click", selector=button)["status"])

    def search(self, selector: str, value: str) -> str:
        self.command("fill", selector=selector, value=value)
        return str(self.command("submit", selector=selector)["url"])

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        self.command("screenshot", path=str(path))
        return path

    def phone(self) -> None:
        self.command("viewport", width=390, height=844, mobile=True)

    def horizontal_overflow(self) -> int:
        return int(self.command("overflow")["overflow"])

    def close(self) -> None:
        if self._process.stdin:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
