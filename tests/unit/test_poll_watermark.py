"""The CRM poll's stored position: window arithmetic, change keys, and the formats stored before issue 20."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.crm.port import ChangedRecord, CrmRef
from shared.crm.watermark import (
    PollCursor,
    WatermarkError,
    change_key,
    parse_change_key,
    stamp_key,
    window_start,
)

AT = dt.datetime(2026, 11, 2, 10, 5, 0, 600_000, tzinfo=dt.UTC)


def test_the_window_starts_on_the_whole_second_the_query_literal_can_say() -> None:
    start = window_start(AT, dt.timedelta(minutes=5))
    assert start == dt.datetime(2026, 11, 2, 10, 0, 0, tzinfo=dt.UTC)
    # A change 0.4 s into that second is inside the window and sorts after its start.
    inside = ChangedRecord(ref=CrmRef(kind="lead", id="00Q1"), stamp=start + dt.timedelta(milliseconds=400))
    assert change_key(inside) >= stamp_key(start)
    assert change_key(inside.model_copy(update={"stamp": start - dt.timedelta(microseconds=1)})) < stamp_key(start)


def test_change_keys_round_trip_and_sort_in_time_order() -> None:
    early = ChangedRecord(ref=CrmRef(kind="opportunity", id="006B"), stamp=AT)
    late = ChangedRecord(ref=CrmRef(kind="lead", id="00QA"), stamp=AT + dt.timedelta(milliseconds=1))
    assert parse_change_key(change_key(early)) == early
    assert sorted([change_key(late), change_key(early)]) == [change_key(early), change_key(late)]


def test_the_cursor_round_trips() -> None:
    cursor = PollCursor(stamp=AT, position=None, pending="2026-11-02T10:05:00.600000Z|lead|00QA")
    assert PollCursor.parse(cursor.dump()) == cursor
    assert PollCursor.parse(None) == PollCursor()


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (
            '{"t": "2026-11-02T10:05:00.600000+00:00", "seen": {"006A": "2026-11-02T10:05:00+00:00"}}',
            PollCursor(stamp=AT),
        ),
        ("2026-11-02T10:05:00.600Z", PollCursor(stamp=AT)),
        ('{"lead": "https://org/api/data/v9.2/leads?$deltatoken=1"}', None),
    ],
)
def test_positions_stored_before_issue_20_are_read(stored: str, expected: PollCursor | None) -> None:
    cursor = PollCursor.parse(stored)
    assert cursor == (expected or PollCursor(position=stored))


@pytest.mark.parametrize("stored", ["not a time", '{"v": 2, "stamp": "yesterday"}', '{"lead": 3}'])
def test_an_unreadable_position_is_a_clear_error(stored: str) -> None:
    with pytest.raises(WatermarkError, match="stored CRM poll position is not readable"):
        PollCursor.parse(stored)
