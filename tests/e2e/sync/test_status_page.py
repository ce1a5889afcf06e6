"""The status page in a real browser (Chromium via playwright-core) against the whole sandbox.

The app runs on the local host with Azurite and the simulators (the sync harness of conftest.py),
all private to this module, so other modules' data does not show up as this system's problems. Each state is saved as a
screenshot under .sandbox/test/ for review:
- a healthy system (desktop and phone), and one deal's audit trail found by the search;
- an injected failure (Salesforce refuses the integration user's session) appearing with its
  reason within one self-refresh, and the dead letter it leaves;
- Replay of that dead letter: it disappears and the record syncs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox import credentials
from sandbox.azurite import Azurite
from sandbox.simulators import SandboxServices, start_all
from shared.sync import runs
from shared.sync.state import DeadLetter, Link
from tests.browser import Browser
from tests.conftest import running_azurite
from tests.e2e.sync.conftest import SyncSystem
from tests.e2e.sync.drivers import cosell_referral
from tests.waiting import wait_until

pytestmark = [pytest.mark.azurite, pytest.mark.sandbox, pytest.mark.e2e]

REFRESH_SECONDS = 5
ONE_REFRESH = REFRESH_SECONDS + 4.0  # the refresh interval plus the time to load the page again


@pytest.fixture(scope="module")
def crm() -> str:
    return "salesforce"  # the page is CRM-neutral; the Dynamics 365 record links are unit-tested


@pytest.fixture(scope="module")
def settings_overrides() -> dict[str, str]:
    return {"STATUS_PAGE_REFRESH_SECONDS": str(REFRESH_SECONDS)}


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    """A private Azurite: 'healthy' means no dead letter or error at all, including other modules'."""
    yield from running_azurite()


@pytest.fixture(scope="module")
def sandbox_services() -> Iterator[SandboxServices]:
    """Private simulators too: other modules' CRM records and referrals (some near expiry on purpose,
    some pointing at referrals this Partner Center never had) are not this system's problems."""
    services = start_all()
    try:
        yield services
    finally:
        services.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    started = Browser()
    try:
        yield started
    finally:
        started.close()


def page_url(sync: SyncSystem) -> str:
    return f"{sync.host.url}/api/status?code={credentials.FUNCTION_KEY}"


def test_a_healthy_system_on_desktop_and_phone(sync: SyncSystem, browser: Browser) -> None:
    shared = sync.partner_center.share_referral(cosell_referral())
    sync.wait_for_record(shared["id"])
    wait_until(lambda: (run := sync.state.get_run(runs.CRM_POLL)) and run.succeeded, what="a CRM poll")
    sync.settle()

    assert browser.goto(page_url(sync)) == 200
    assert "All good" in (browser.text("#all-good") or "")
    assert browser.count('.connection[data-healthy="no"]') == 0
    assert browser.count('.connection[data-healthy="yes"]') == 3
    sign_in = browser.text("#connections") or ""
    assert credentials.PC_ADMIN_USER in sign_in and "MFA\tyes" in sign_in.replace(" ", "\t").replace("\n", "\t")
    assert int(browser.text('#activity [data-outcome="synced"]') or 0) >= 1
    assert "never" not in (browser.text(f'#jobs [data-job="{runs.CRM_POLL}"]') or "never")
    assert shared["name"] in (browser.text("#waiting") or "")  # Microsoft's referral, not yet accepted
    browser.screenshot("status-healthy.png")

    browser.search('#search input[name="q"]', shared["id"])
    assert browser.count(f'#search .match[data-link="pc-{shared["id"]}"]') == 1
    assert "synced" in (browser.text("#search .audit") or "")
    browser.screenshot("status-search.png")

    browser.phone()
    assert browser.goto(page_url(sync)) == 200
    assert browser.horizontal_overflow() <= 0, "the page scrolls sideways on a phone"
    browser.screenshot("status-phone.png")
    browser.command("viewport", width=1280, height=900)


def _dead_letter_of(sync: SyncSystem, referral_id: str) -> DeadLetter | None:
    return next((letter for letter in sync.state.list_dead_letters() if referral_id in letter.payload), None)


def test_a_failure_shows_within_one_refresh_and_replay_repairs_it(sync: SyncSystem, browser: Browser) -> None:
    assert browser.goto(page_url(sync)) == 200
    assert browser.count('.connection[data-healthy="no"]') == 0

    # Salesforce starts refusing the integration user's session (a revoked connected app, say).
    sync.crm_control.fault(method="*", path_prefix="/services/data", status=401, count=100_000)
    wait_until(
        lambda: (run := sync.state.get_run(runs.CRM_POLL)) and not run.succeeded, timeout=30, what="a failed poll"
    )
    shown = browser.wait_for_text("#connections", "CrmAuthError", timeout=ONE_REFRESH)
    assert shown["found"], f"the CRM sign-in failure did not appear within one refresh: {shown['text']}"
    assert shown["reloads"] >= 1  # the page refreshed itself; the test never reloaded it
    assert "cannot sign in to salesforce" in (browser.text("#attention") or "")

    # A referral shared meanwhile cannot be synced: no retry fixes a refused sign-in, so it becomes a
    # dead letter at once, with the reason and what to do.
    shared = sync.partner_center.share_referral(cosell_referral())
    letter = wait_until(lambda: _dead_letter_of(sync, shared["id"]), timeout=60, what="the dead letter")
    assert letter is not None
    row = f'#dead-letters tr[data-letter="{letter.id}"]'
    shown = browser.wait_for_text(row, "INVALID_SESSION_ID", timeout=ONE_REFRESH)
    assert shown["found"], f"the dead letter did not appear within one refresh: {shown['text']}"
    assert shared["id"] in (browser.text(row) or "") and "Needs an admin" in (browser.text(row) or "")
    browser.screenshot("status-failure.png")

    # The admin fixes Salesforce, then presses Replay.
    sync.crm_control.clear_faults()
    assert browser.submit_form(f"{row} button") == 303  # POST, then back to the page (no resubmit on reload)
    shown = browser.wait_for_text("#notice", "is back on the sync queue", timeout=ONE_REFRESH)
    assert shown["found"], f"no confirmation after Replay: {shown['text']}"
    assert browser.count(row) == 0
    replayed = sync.state.get_dead_letter(letter.id)
    assert replayed is not None and replayed.replayed_at is not None

    record = sync.wait_for_record(shared["id"])
    assert record.id
    link = wait_until(
        lambda: (found := sync.state.find_link_by_referral(shared["id"])) and found.state == "linked" and found,
        what="the link of the replayed referral",
    )
    assert isinstance(link, Link) and link.crm_id == record.id
    # The page refreshes itself into the repaired state: the replayed sync is counted, all is good.
    shown = browser.wait_for_text('#activity [data-outcome="synced"]', "2", timeout=2 * ONE_REFRESH)
    assert shown["found"], f"the replayed sync did not show: {shown['text']}"
    assert "All good" in (browser.text("#all-good") or "")
    assert browser.count("#dead-letters tr[data-letter]") == 0
    assert int(browser.text('#activity [data-outcome="dead letter"]') or 0) == 1
    browser.screenshot("status-replayed.png")
    sync.settle()
