"""A failure only an admin can fix is dead-lettered at once and shown by health (real Azurite)."""

from __future__ import annotations

import pytest

from shared.admin.health import check_health
from shared.partner_center.client import PartnerCenterAuthError
from shared.settings import Settings
from shared.sync.errors import NEEDS_ADMIN
from shared.sync.failures import run_recording_failures
from shared.sync.state import StateStore
from shared.sync.storage import StorageAccount

pytestmark = pytest.mark.azurite


def test_a_revoked_sign_in_is_dead_lettered_at_once_and_health_says_what_to_do(
    storage: StorageAccount, settings: Settings
) -> None:
    state = StateStore(storage)

    def revoked() -> None:
        raise PartnerCenterAuthError("AADSTS50173: the grant was revoked", status=401)

    assert run_recording_failures(state, queue="sync", payload='{"x": 1}', dequeue_count=1, handler=revoked) is None
    letter = next(item for item in state.list_dead_letters(limit=5) if "AADSTS50173" in item.reason)
    try:
        assert letter.reason.startswith(NEEDS_ADMIN) and letter.dequeue_count == 1
        report = check_health(detailed=True, load_settings=lambda: settings)
        assert not report.healthy
        assert any("AADSTS50173" in item["reason"] for item in report.detailed_body()["needs_admin"])
    finally:
        state.mark_dead_letter_replayed(letter.id)  # the admin fixed it: health recovers
    report = check_health(detailed=True, load_settings=lambda: settings)
    assert not any("AADSTS50173" in item["reason"] for item in report.detailed_body()["needs_admin"])
