"""One error policy (shared/sync/errors.py): what is retried, what is recorded, what waits for an admin."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pytest

from shared.crm.port import CrmAuthError, CrmSetupError, CrmTransientError, CrmValidationError
from shared.partner_center.auth import SignInRequired
from shared.partner_center.client import (
    PartnerCenterAuthError,
    PartnerCenterThrottledError,
    PartnerCenterValidationError,
)
from shared.sync.engine import SyncRetryError
from shared.sync.errors import NEEDS_ADMIN, ErrorKind, classify
from shared.sync.failures import run_recording_failures
from shared.sync.state import DeadLetter, StateStore
from tests.fakes.world import World


@pytest.mark.parametrize(
    ("error", "kind", "words"),
    [
        (SignInRequired("no Partner Center sign-in is stored"), ErrorKind.NEEDS_ADMIN, "partner-center login"),
        (PartnerCenterAuthError("forbidden", status=403), ErrorKind.NEEDS_ADMIN, "Referrals Admin role"),
        (CrmAuthError("INVALID_GRANT"), ErrorKind.NEEDS_ADMIN, "CRM credentials"),
        (CrmSetupError("INVALID_FIELD: No such column 'PCS_Referral_Status__c'"), ErrorKind.NEEDS_ADMIN, "deploy"),
        (
            CrmValidationError("Amount: must be positive", code="FIELD_CUSTOM_VALIDATION_EXCEPTION"),
            ErrorKind.PERMANENT,
            "",
        ),
        (PartnerCenterValidationError("bad country", status=400), ErrorKind.PERMANENT, ""),
        (CrmTransientError("REQUEST_LIMIT_EXCEEDED", retry_after_seconds=20), ErrorKind.TRANSIENT, ""),
        (PartnerCenterThrottledError("429", status=429), ErrorKind.TRANSIENT, ""),
        (SyncRetryError("kept changing"), ErrorKind.TRANSIENT, ""),
        (RuntimeError("something we do not know"), ErrorKind.TRANSIENT, ""),
    ],
)
def test_every_error_is_transient_permanent_or_needs_admin(error: Exception, kind: ErrorKind, words: str) -> None:
    classified = classify(error)
    assert classified.kind is kind
    assert words in classified.reason
    if kind is ErrorKind.NEEDS_ADMIN:
        assert classified.reason.startswith(NEEDS_ADMIN) and str(error) in classified.reason


def test_retry_after_is_carried_for_a_transient_crm_error() -> None:
    assert classify(CrmTransientError("slow down", retry_after_seconds=20)).retry_after_seconds == 20


class _Notes:
    """Records what the worker's failure handling writes to the state store."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.dead_letters: list[str] = []

    def record_failure(self, queue: str, payload: str, error: str, dequeue_count: int) -> None:
        self.failures.append(error)

    def record_dead_letter(
        self, *, queue: str, payload: str, dequeue_count: int, reason: str | None = None
    ) -> DeadLetter:
        self.dead_letters.append(reason or "")
        now = dt.datetime.now(dt.UTC)
        return DeadLetter(
            id="1", queue=queue, payload=payload, reason=reason or "", dequeue_count=dequeue_count, time=now
        )


def _run(notes: _Notes, error: Exception) -> Any:
    def handler() -> None:
        raise error

    return run_recording_failures(cast(StateStore, notes), queue="sync", payload="{}", dequeue_count=1, handler=handler)


def test_a_revoked_sign_in_is_dead_lettered_at_once_with_what_to_do() -> None:
    notes = _Notes()
    assert _run(notes, PartnerCenterAuthError("token revoked", status=401)) is None  # no retry
    (reason,) = notes.dead_letters
    assert reason.startswith(NEEDS_ADMIN) and "partner-center login" in reason
    assert notes.failures == []


def test_a_transient_error_goes_back_to_the_queue_with_its_reason_noted() -> None:
    notes = _Notes()
    with pytest.raises(CrmTransientError):
        _run(notes, CrmTransientError("REQUEST_LIMIT_EXCEEDED"))
    assert notes.dead_letters == [] and "REQUEST_LIMIT_EXCEEDED" in notes.failures[0]


def test_a_schema_not_provisioned_is_not_blamed_on_the_record_but_raised_for_an_admin() -> None:
    world = World.build()
    referral_id, ref = world.referral_synced()
    world.crm.fail_next(CrmSetupError("INVALID_FIELD: No such column 'PCS_Referral_Status__c'"))
    with pytest.raises(CrmSetupError):
        world.pc_edits(referral_id, **{"details.notes": "new"})
    assert world.crm.read(ref).connector.sync_status == "Synced"  # the seller's record is not blamed
