"""One settable clock for the engine and the fake stores."""

from __future__ import annotations

import datetime as dt


class FakeClock:
    def __init__(self, start: dt.datetime = dt.datetime(2026, 5, 1, 9, 0, tzinfo=dt.UTC)) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        """Given to the engine as its `sleep`: time passes, nobody waits."""
        self.advance(seconds)
