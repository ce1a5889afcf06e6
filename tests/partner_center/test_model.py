"""The referral wire model round-trips the reference examples and tolerates unknown enum values."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from shared.model.referral import Referral
from shared.model.webhook import WebhookEvent

EXAMPLES = Path(__file__).parent / "examples"


def test_incoming_cosell_example_parses_with_wire_names() -> None:
    raw = json.loads((EXAMPLES / "referral-incoming-cosell.json").read_text())
    referral = Referral.model_validate(raw)
    assert referral.e_tag == '"6b00c3a1-0000-0800-0000-6737f1c40000"'
    assert referral.tracking_info and referral.tracking_info.microsoft_msx_id == "7-1A2B3C4D5E"
    assert referral.consent and referral.consent.consent_to_share_referral_with_microsoft_sellers is True
    assert referral.customer_profile and referral.customer_profile.address
    assert referral.customer_profile.address.country == "US"
    assert referral.updated_date_time and referral.updated_date_time.microsecond == 123456
    assert referral.invited_by_microsoft and referral.kind() == "co_sell"
    wire = referral.to_wire()
    assert wire["eTag"] == raw["eTag"]
    assert wire["consent"]["consentToToShareInfoWithOthers"] is False
    assert wire["trackingInfo"]["microsoftMsxId"] == "7-1A2B3C4D5E"
    assert wire["@odata.context"] == raw["@odata.context"]
    assert wire["updatedDateTime"] == "2026-11-18T09:12:44.123456Z"


def test_unknown_enum_values_are_kept_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.model.referral"):
        first = Referral.model_validate({"substatus": "Engaged", "brandNewField": {"x": 1}})
        Referral.model_validate({"substatus": "Engaged"})
    assert first.substatus == "Engaged"
    assert first.to_wire()["brandNewField"] == {"x": 1}
    assert len([record for record in caplog.records if "Engaged" in record.getMessage()]) == 1


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"type": "Independent", "qualification": "Direct"}, "marketplace_lead"),
        (
            {
                "type": "Independent",
                "qualification": "SalesQualified",
                "inviteContext": {"invitedBy": {"organizationId": "msft"}},
            },
            "qualified_lead",
        ),
        ({"type": "Shared", "qualification": "SalesQualified"}, "co_sell"),
    ],
)
def test_referral_kind(fields: dict[str, object], kind: str) -> None:
    assert Referral.model_validate(fields).kind() == kind


def test_webhook_envelope_is_case_insensitive() -> None:
    event = WebhookEvent.model_validate(
        {"eventName": "referral-updated", "resourceUri": "https://h/engagements/v1/referrals/abc-1", "AuditUrl": None}
    )
    assert event.is_referral_event and event.referral_id() == "abc-1"


def test_a_us_state_is_read_from_region_as_real_payloads_carry_it() -> None:
    real = Referral.model_validate(
        {"customerProfile": {"address": {"city": "Redmond", "state": None, "region": "WA", "country": "US"}}}
    )
    assert real.customer_profile and real.customer_profile.address
    assert real.customer_profile.address.state == "WA" and real.customer_profile.address.region == "WA"
    documented = Referral.model_validate({"customerProfile": {"address": {"state": "CA", "region": "Americas"}}})
    assert documented.customer_profile and documented.customer_profile.address
    assert documented.customer_profile.address.state == "CA"  # `state` wins when both are there


def test_tags_are_read_as_objects_or_as_text() -> None:
    assert Referral.model_validate({"tags": [{"tag": "azure"}, "sap"]}).tags == ["azure", "sap"]


@pytest.mark.parametrize(
    ("fields", "microsoft"),
    [
        ({"organizationId": "msft"}, True),
        ({"organizationId": "5b1f", "target": [{"type": "BusinessProfileLocation", "id": "msft"}]}, True),
        ({"organizationId": "5b1f", "inviteContext": {"invitedBy": {"organizationId": "msft"}}}, False),
        ({"organizationId": "5b1f", "target": [{"type": "SolutionProfile", "id": "msft"}]}, False),
    ],
)
def test_microsofts_own_referral_is_recognised_in_both_undocumented_forms(
    fields: dict[str, object], microsoft: bool
) -> None:
    assert Referral.model_validate(fields).is_microsoft_side is microsoft
