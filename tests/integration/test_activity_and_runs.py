"""Counts by outcome and job runs in the state store, on a real Azurite."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from shared.sync import runs
from shared.sync.state import StateStore
from shared.sync.storage import StorageAccount

pytestmark = pytest.mark.azurite


@pytest.fixture
def state(storage: StorageAccount) -> StateStore:
    return StateStore(storage)


def test_outcomes_are_counted_since_a_moment_across_links(state: StateStore) -> None:
    before = state.count_outcomes(dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    start = dt.datetime.now(dt.UTC)
    for outcome in ("synced", "synced", "error"):
        state.append_audit(f"pc-{uuid.uuid4()}", direction="pc->crm", outcome=outcome, message="m")
    since_start = state.count_outcomes(start)
    assert since_start.get("synced", 0) >= 2 and since_start.get("error", 0) >= 1
    day = state.count_outcomes(dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    assert day.get("synced", 0) == before.get("synced", 0) + 2
    assert day.get("error", 0) == before.get("error", 0) + 1
    # Nothing was written after now: a window starting later counts none of them.
    assert state.count_outcomes(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)) == {}


def test_pruning_removes_only_hours_before_the_cut(state: StateStore) -> None:
    state.append_audit(f"pc-{uuid.uuid4()}", direction="pc->crm", outcome="synced", message="m")
    assert state.prune_activity(dt.datetime.now(dt.UTC) - dt.timedelta(days=2)) == 0
    assert state.count_outcomes(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).get("synced", 0) >= 1


def test_a_failed_run_keeps_the_time_of_the_last_success(state: StateStore) -> None:
    name = f"job-{uuid.uuid4().hex[:8]}"
    assert state.get_run(name) is None
    ok = runs.recorded(lambda: state, name, lambda: 42)
    assert ok == 42
    first = state.get_run(name)
    assert first is not None and first.succeeded and first.last_success_at is not None

    def broken() -> None:
        raise RuntimeError("Salesforce said INVALID_SESSION_ID")

    with pytest.raises(RuntimeError):
        runs.recorded(lambda: state, name, broken)
    failed = state.get_run(name)
    assert failed is not None and not failed.succeeded
    assert failed.error == "RuntimeError: Salesforce said INVALID_SESSION_ID"
    assert failed.last_success_at == first.last_success_at
    assert failed.last_run_at > first.last_run_at
    assert failed.failing_since == failed.last_run_at

    with pytest.raises(RuntimeError):
        runs.recorded(lambda: state, name, broken)
    still = state.get_run(name)
    assert still is not None and still.failing_since == failed.failing_since  # since the first failure

    runs.recorded(lambda: state, name, lambda: None)
    healed = state.get_run(name)
    assert healed is not None and healed.succeeded and healed.failing_since is None and healed.error is None
