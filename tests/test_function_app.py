"""Importing function_app indexes exactly the expected functions (catches "0 functions found")."""

from __future__ import annotations

from typing import Any

import function_app
from sandbox.host import indexed_functions

EXPECTED = {
    "health": "httpTrigger",
    "health_details": "httpTrigger",
    "poll_crm_changes": "timerTrigger",
    "process_sync_request": "queueTrigger",
    "quarantine_poison_sync_request": "queueTrigger",
    "receive_partner_center_event": "httpTrigger",
    "reconcile_partner_center": "timerTrigger",
    "refresh_partner_center_sign_in": "timerTrigger",
    "register_partner_center_webhook": "httpTrigger",
    "status_page": "httpTrigger",
    "evaluate_alerts": "timerTrigger",
}


def _triggers() -> dict[str, dict[str, Any]]:
    return {f.get_function_name(): f.get_trigger().get_dict_repr() for f in indexed_functions(function_app.app)}


def test_function_app_indexes_every_expected_function_with_its_trigger_type() -> None:
    assert {name: trigger["type"] for name, trigger in _triggers().items()} == EXPECTED


def test_http_routes_and_auth_levels() -> None:
    triggers = _triggers()
    assert triggers["health"]["route"] == "health"
    assert triggers["health"]["authLevel"].value == "anonymous"
    assert triggers["health_details"]["route"] == "health/details"
    assert triggers["health_details"]["authLevel"].value == "function"
    registration = triggers["register_partner_center_webhook"]
    assert registration["route"] == "manage/partner-center/webhook-registration"
    assert registration["authLevel"].value == "function"
    status = triggers["status_page"]
    assert status["route"] == "status"
    # Anonymous for the host: App Service authentication (Azure) or the page itself (sandbox) checks access.
    assert status["authLevel"].value == "anonymous"
    # The Functions host refuses any route whose first segment is `admin` (reserved for its own API).
    assert not [name for name, t in triggers.items() if str(t.get("route", "")).lower().startswith("admin")]


def test_poison_trigger_listens_on_the_sync_poison_queue() -> None:
    trigger = _triggers()["quarantine_poison_sync_request"]
    assert trigger["queueName"] == "sync-poison"
    assert trigger["connection"] == "AzureWebJobsStorage"
