"""NCRONTAB schedules as the timer trigger reads them (six fields, seconds first, UTC)."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.ncrontab import Schedule, ScheduleError

T0 = dt.datetime(2026, 11, 21, 10, 7, 30, 500_000, tzinfo=dt.UTC)  # a Saturday


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 */1 * * * *", dt.datetime(2026, 11, 21, 10, 8, 0, tzinfo=dt.UTC)),
        ("*/10 * * * * *", dt.datetime(2026, 11, 21, 10, 7, 40, tzinfo=dt.UTC)),
        ("0 */15 * * * *", dt.datetime(2026, 11, 21, 10, 15, 0, tzinfo=dt.UTC)),
        ("0 0 3 * * *", dt.datetime(2026, 11, 22, 3, 0, 0, tzinfo=dt.UTC)),
        ("0 30 9 * * Mon-Fri", dt.datetime(2026, 11, 23, 9, 30, 0, tzinfo=dt.UTC)),
        ("0 0 0 1 Jan *", dt.datetime(2027, 1, 1, 0, 0, 0, tzinfo=dt.UTC)),
        ("15,45 7 10 * * *", dt.datetime(2026, 11, 21, 10, 7, 45, tzinfo=dt.UTC)),
        ("0 0 12 * * 0", dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)),
    ],
)
def test_next_occurrence(expression: str, expected: dt.datetime) -> None:
    assert Schedule.parse(expression).next_after(T0) == expected


def test_next_after_is_strictly_later() -> None:
    on_the_minute = dt.datetime(2026, 11, 21, 10, 8, 0, tzinfo=dt.UTC)
    assert Schedule.parse("0 * * * * *").next_after(on_the_minute) == on_the_minute + dt.timedelta(minutes=1)


@pytest.mark.parametrize(
    "expression", ["* * * * *", "0 60 * * * *", "0 0 25 * * *", "0 0 0 0 * *", "x * * * * *", "*/0 * * * * *"]
)
def test_invalid_expressions_are_refused(expression: str) -> None:
    with pytest.raises(ScheduleError):
        Schedule.parse(expression)
