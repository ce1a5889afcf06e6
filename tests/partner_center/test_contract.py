"""The contract data file: what it holds agrees with the published sources, and its helpers refuse
anything outside it."""

from __future__ import annotations

import pytest

from shared.partner_center.contract import contract

# PatchReferralById's path enum in Microsoft's certified connector definition (read 2024-10 snapshot).
CERTIFIED_CONNECTOR_PATCH_PATHS = {
    "/campaignId",
    "/consent/consentToShareReferralWithMicrosoftSellers",
    "/customerProfile/team",
    "/customerProfile/team/-",
    "/details/closingDateTime",
    "/details/currency",
    "/details/dealValue",
    "/details/notes",
    "/details/requirements/solutions",
    "/details/requirements/solutions/-",
    "/externalReferenceId",
    "/referralProgram",
    "/salesStage",
    "/status",
    "/substatus",
    "/statusReason",
    "/team",
    "/team/-",
}


def test_the_patchable_paths_are_exactly_the_certified_connectors() -> None:
    assert contract().patch_paths == CERTIFIED_CONNECTOR_PATCH_PATHS
    assert contract().patch_operations == ("add", "replace")
    for unlisted in (
        "/name",
        "/customerProfile/name",
        "/customerProfile/address",
        "/inviteContext/assistanceRequestCode",
    ):
        assert not contract().is_patchable(unlisted)
        with pytest.raises(ValueError, match="not a patchable"):
            contract().patch_operation(unlisted, "x")
    with pytest.raises(ValueError, match="not accepted"):
        contract().patch_operation("/details/notes", "x", op="remove")


def test_members_and_documents_refuse_what_a_referral_does_not_have() -> None:
    assert contract().has_member("/trackingInfo/microsoftMsxId")
    assert contract().has_member("/customerProfile/team/0/email")
    assert not contract().has_member("/customerProfile/nickname")
    with pytest.raises(ValueError, match="/details/dealvalue"):
        contract().referral_document({"details": {"dealvalue": 1}})
    document = contract().referral_document({"name": "x", "customerProfile": {"address": {"region": "WA"}}})
    assert document["customerProfile"]["address"] == {
        "addressLine1": None,
        "addressLine2": None,
        "city": None,
        "country": None,
        "postalCode": None,
        "region": "WA",
        "state": None,
    }
    assert document["campaignId"] is None and document["team"] == []


def test_create_terms() -> None:
    assert contract().marketplace_intent() == {"id": "HaveNotDecided", "type": "CustomerMarketplaceIntent"}
    with pytest.raises(ValueError, match="marketplace intent"):
        contract().marketplace_intent("Perhaps")
    private = contract().consent_on_create(shared=False)
    assert set(private) == {
        "consentToContact",
        "consentToToShareInfoWithOthers",
        "consentToMicrosoftToContactSpecificPartners",
        "consentToShareReferralWithMicrosoftSellers",
    }
    assert not any(private.values()) and all(contract().consent_on_create(shared=True).values())


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        ("OK", True),
        ("ok", True),
        ("Accepted", True),
        (200, True),
        ("204", True),
        ("Unauthorized", False),
        (401, False),
        ("", False),
        (None, False),
        (True, False),
    ],
)
def test_validation_result_codes_in_text_or_number(code: object, ok: bool) -> None:
    assert contract().validation_result_ok(code) is ok


def test_transitions_and_related_filter() -> None:
    assert contract().next_statuses("Closed") == frozenset()
    assert contract().substatuses("Active") == {"Accepted"}
    guid = "3f2b8c1d-5e6a-4b7c-9d8e-0a1b2c3d4e5f"
    assert contract().related_referrals_filter(guid) == f"engagementId eq {guid}"
