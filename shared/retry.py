"""One short in-process retry budget for calls to the outside (tenacity).

A transient failure (throttling, 5xx, a dropped connection) is retried here a few times within a
few seconds, honouring the server's Retry-After; when the budget is spent, or the server asks for a
longer wait than is left of it, the error goes up at once, carrying that wait, and the queue retries
the whole sync later (shared/sync/errors.py). So in-process loops no longer stack minutes of
waiting under the queue's own deliveries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import tenacity

T = TypeVar("T")

DEFAULT_BACKOFF = (0.5, 1.0, 2.0)
"""Waits between attempts when the server names none."""
DEFAULT_BUDGET_SECONDS = 5.0
"""At most this much waiting in-process per call."""


class RetryLater(Exception):
    """Raised by one attempt that may be repeated: `error` is what the caller gets if it is not;
    `retry_after` is the server's wait in seconds (None: our own back-off)."""

    def __init__(self, error: Exception, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class _OverBudget(tenacity.stop.stop_base):
    """Stop when the next wait would take the time waited past the budget (a Retry-After longer
    than what is left goes back to the queue instead of being slept through)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return retry_state.idle_for + retry_state.upcoming_sleep > self.seconds


@dataclass(frozen=True)
class RetryBudget:
    backoff: Sequence[float] = DEFAULT_BACKOFF
    """One wait per retry: its length is the number of retries."""
    seconds: float = DEFAULT_BUDGET_SECONDS

    def call(self, attempt: Callable[[], T], *, sleep: Callable[[float], None] = time.sleep) -> T:
        """Run `attempt` until it returns; repeat it while it raises `RetryLater` and the budget
        allows, then raise that `RetryLater`'s error."""

        def wait(state: tenacity.RetryCallState) -> float:
            later = state.outcome.exception() if state.outcome else None
            if isinstance(later, RetryLater) and later.retry_after is not None:
                return max(later.retry_after, 0.0)
            return self.backoff[min(state.attempt_number, len(self.backoff)) - 1] if self.backoff else 0.0

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryLater),
            wait=wait,
            stop=tenacity.stop_any(tenacity.stop_after_attempt(len(self.backoff) + 1), _OverBudget(self.seconds)),
            sleep=sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except RetryLater as later:
            raise later.error from later.error.__cause__
