"""The one short in-process retry budget (shared/retry.py)."""

from __future__ import annotations

import pytest

from shared.retry import RetryBudget, RetryLater


class Flaky:
    def __init__(self, failures: int, retry_after: float | None = None) -> None:
        self.failures = failures
        self.retry_after = retry_after
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise RetryLater(TimeoutError(f"attempt {self.calls}"), self.retry_after)
        return "done"


def test_our_back_off_between_attempts_when_the_server_names_no_wait() -> None:
    slept: list[float] = []
    assert RetryBudget(backoff=(0.5, 1.0, 2.0)).call(Flaky(2), sleep=slept.append) == "done"
    assert slept == [0.5, 1.0]


def test_the_servers_retry_after_is_honoured() -> None:
    slept: list[float] = []
    assert RetryBudget().call(Flaky(1, retry_after=2.0), sleep=slept.append) == "done"
    assert slept == [2.0]


def test_when_the_attempts_are_spent_the_last_error_goes_up() -> None:
    slept: list[float] = []
    flaky = Flaky(10)
    with pytest.raises(TimeoutError, match="attempt 3"):
        RetryBudget(backoff=(0.1, 0.1)).call(flaky, sleep=slept.append)
    assert flaky.calls == 3 and slept == [0.1, 0.1]


def test_a_wait_beyond_the_budget_is_not_slept_through() -> None:
    slept: list[float] = []
    flaky = Flaky(10, retry_after=3.0)
    with pytest.raises(TimeoutError, match="attempt 2"):
        RetryBudget(seconds=5.0).call(flaky, sleep=slept.append)
    assert slept == [3.0]  # 3 + 3 would pass the 5 s budget: the queue retries after the wait


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def broken() -> str:
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        RetryBudget().call(broken, sleep=lambda seconds: None)
    assert calls == [1]
