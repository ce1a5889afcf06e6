"""Backfill pieces without I/O: the rate limiter, the stored scope, the HTML report's escaping."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from shared.backfill.compare import Comparison, Finding, Scope
from shared.backfill.preview import FieldDifference
from shared.backfill.report import rows, write_report
from shared.backfill.run import RateLimiter
from shared.crm.port import CrmRef
from shared.sync.queues import CrmChange


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_rate_limiter_spaces_events_evenly_and_never_bursts() -> None:
    clock = FakeClock()
    limiter = RateLimiter(120, clock=clock, sleep=clock.sleep)  # one every 0.5 s
    for _ in range(5):
        limiter.wait()
    assert clock.slept == [0.5, 0.5, 0.5, 0.5]
    clock.now += 10  # a slow send: no catching up with a burst afterwards
    limiter.wait()
    limiter.wait()
    assert clock.slept[-1] == 0.5 and len(clock.slept) == 5


def test_a_rate_below_one_a_minute_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one per minute"):
        RateLimiter(0)


def test_the_stored_scope_reads_back_equal() -> None:
    scope = Scope(
        since=dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC),
        referral_ids=("r-1", "r-2"),
        crm_refs=(CrmRef(kind="lead", id="00Q1"), CrmRef(kind="opportunity", id="a:b")),
    )
    assert Scope.from_json(scope.to_json()) == scope
    assert (
        scope.describe() == "changed since 2026-11-01 08:00 UTC, referral r-1, referral r-2, lead 00Q1, opportunity a:b"
    )
    assert Scope().describe() == "everything"


def test_the_html_report_escapes_what_the_systems_hold(tmp_path: Path) -> None:
    finding = Finding(
        category="fields differ",
        referral_id="r-1",
        crm=CrmRef(kind="opportunity", id="006A"),
        name="<script>alert(1)</script> & Co",
        action="sync the differences (Partner Center -> CRM)",
        message=CrmChange(object="opportunity", record_id="006A"),
        differences=[FieldDifference("notes", "notes", "<b>new</b>", "old", "Partner Center -> CRM")],
    )
    comparison = Comparison(scope=Scope(), findings=[finding], referrals_read=1, records_read=1, in_sync=0)
    page = write_report(comparison, tmp_path / "report.html", title="t").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in page
    assert "&lt;b&gt;new&lt;/b&gt;" in page
    assert [row["field"] for row in rows(comparison)] == ["", "notes"]
    with pytest.raises(ValueError, match=r"\.csv or \.html"):
        write_report(comparison, tmp_path / "report.txt", title="t")
