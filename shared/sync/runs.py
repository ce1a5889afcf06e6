"""When each timer and the webhook intake last ran, recorded around the job itself.

The status page shows these times and the alerts fire when one is too old. Recording never
changes the job's outcome: a storage hiccup while noting a run is logged, and the job's own
result (or exception, for the host's retry) is what the caller gets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from shared.sync.state import StateStore

log = logging.getLogger(__name__)
Result = TypeVar("Result")

CRM_POLL = "crm-poll"
PC_RECONCILE = "pc-reconcile"
PC_WEBHOOK = "pc-webhook"
PC_TOKEN_REFRESH = "pc-token-refresh"
ALERTS = "alerts"


def _note(state: Callable[[], StateStore], name: str, error: str | None) -> None:
    try:
        state().record_run(name, error=error)
    except Exception:
        log.exception("could not record the run of %s", name)


def recorded(state: Callable[[], StateStore], name: str, job: Callable[[], Result]) -> Result:
    """Run `job` and note when it ran and whether it failed (with the error in plain words)."""
    try:
        result = job()
    except Exception as error:
        _note(state, name, f"{type(error).__name__}: {error}")
        raise
    _note(state, name, None)
    return result
