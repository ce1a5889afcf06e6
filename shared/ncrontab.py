"""Six-field NCRONTAB schedules, as the Functions timer trigger reads them.

`{second} {minute} {hour} {day} {month} {day-of-week}`: each field `*`, a number, a range `a-b`, a
list `a,b`, and steps `*/n` or `a-b/n`; months and days may be named (`Jan`, `Mon`). Day-of-month
and day-of-week combine like cron: when both are restricted, either may match. Times are UTC, as
in Azure unless WEBSITE_TIME_ZONE is set.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

_MONTHS = {
    name: index
    for index, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_DAYS = {name: index for index, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}

# (lowest, highest, names) per field, seconds first.
_FIELDS: list[tuple[int, int, dict[str, int]]] = [
    (0, 59, {}),
    (0, 59, {}),
    (0, 23, {}),
    (1, 31, {}),
    (1, 12, _MONTHS),
    (0, 6, _DAYS),
]
_FIELD_NAMES = ["second", "minute", "hour", "day", "month", "day-of-week"]


class ScheduleError(ValueError):
    """The expression is not a valid six-field NCRONTAB schedule."""


def _value(text: str, names: dict[str, int], field: str) -> int:
    lowered = text.lower()
    if lowered in names:
        return names[lowered]
    if not text.isdigit():
        raise ScheduleError(f"{field} field: {text!r} is not a number")
    return int(text)


def _parse_field(text: str, index: int) -> frozenset[int]:
    low, high, names = _FIELDS[index]
    field = _FIELD_NAMES[index]
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step_text and (not step_text.isdigit() or step == 0):
            raise ScheduleError(f"{field} field: step {step_text!r} must be a positive number")
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, last = base.split("-", 1)
            start, end = _value(first, names, field), _value(last, names, field)
        else:
            start = _value(base, names, field)
            end = high if step_text else start
        if index == 5 and end == 7:  # cron allows 7 for Sunday
            end = 6 if start <= 6 else 0
            values.add(0)
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise ScheduleError(f"{field} field: {base!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Schedule:
    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expression: str) -> Schedule:
        parts = expression.split()
        if len(parts) != 6:
            raise ScheduleError(
                f"{expression!r} has {len(parts)} fields; NCRONTAB needs six (second minute hour day month day-of-week)"
            )
        seconds, minutes, hours, days, months, weekdays = (
            _parse_field(part, index) for index, part in enumerate(parts)
        )
        return cls(
            expression,
            seconds=seconds,
            minutes=minutes,
            hours=hours,
            days=days,
            months=months,
            weekdays=weekdays,
            any_day=parts[3] == "*",
            any_weekday=parts[5] == "*",
        )

    def _day_matches(self, moment: dt.datetime) -> bool:
        weekday = (moment.weekday() + 1) % 7  # Python: Monday=0; cron: Sunday=0
        if self.any_day or self.any_weekday:
            return moment.day in self.days and weekday in self.weekdays
        return moment.day in self.days or weekday in self.weekdays

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first occurrence strictly after `moment` (aware datetimes; searched up to 5 years)."""
        candidate = moment.replace(microsecond=0) + dt.timedelta(seconds=1)
        limit = moment + dt.timedelta(days=366 * 5)
        while candidate <= limit:
            if candidate.month not in self.months:
                year, month = (
                    (candidate.year + 1, 1) if candidate.month == 12 else (candidate.year, candidate.month + 1)
                )
                candidate = candidate.replace(year=year, month=month, day=1, hour=0, minute=0, second=0)
                continue
            if not self._day_matches(candidate):
                candidate = (candidate + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0)
                continue
            if candidate.hour not in self.hours:
                candidate = (candidate + dt.timedelta(hours=1)).replace(minute=0, second=0)
                continue
            if candidate.minute not in self.minutes:
                candidate = (candidate + dt.timedelta(minutes=1)).replace(second=0)
                continue
            if candidate.second not in self.seconds:
                candidate += dt.timedelta(seconds=1)
                continue
            return candidate
        raise ScheduleError(f"{self.expression!r} never fires")
