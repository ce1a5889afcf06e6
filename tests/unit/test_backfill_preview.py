"""What the backfill says a sync would do: the engine's own merge and rules, asked without I/O."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from shared.backfill.preview import Preview, preview_sync
from shared.crm.port import ConnectorFields, CrmAccount, CrmCapabilities, CrmRecord, CrmRef
from shared.mapping.fields import ReadContext
from shared.mapping.views import crm_view, referral_view
from shared.model.referral import Referral
from shared.settings import Settings, load_settings
from shared.sync.queues import CrmChange, PartnerCenterChange
from shared.sync.state import Link
from tests.conftest import base_environment
from tests.unit.test_mapping import REFERRAL, record

SETTINGS: Settings = load_settings(base_environment("UseDevelopmentStorage=true"))
SALESFORCE = CrmCapabilities(pending_stage="Prospecting", lead_has_name=False)
EARLY = dt.datetime(2026, 5, 1, 9, 0, tzinfo=dt.UTC)


def referral(**overrides: Any) -> Referral:
    return Referral.model_validate({**REFERRAL, "updatedDateTime": "2026-05-01T09:00:00Z", **overrides})


def linked(pc: Referral, crm: CrmRecord) -> Link:
    """A link whose last sync saw exactly these two."""
    crm_base = crm_view(crm, ReadContext(pending_stage="Prospecting", lead_has_name=False))
    return Link(
        link_id="pc-r-1",
        referral_id="r-1",
        crm_object="opportunity",
        crm_id=crm.ref.id,
        pc_etag=pc.e_tag,
        snapshot={"pc": referral_view(pc), "crm": crm_base},
    )


def preview(pc: Referral | None, crm: CrmRecord | None, link: Link | None, **flags: bool) -> Preview:
    return preview_sync(SETTINGS, SALESFORCE, referral=pc, record=crm, link=link, **flags)


def actions(result: Preview) -> dict[str, str]:
    return {item.field: item.action for item in result.differences}


def test_a_seller_edit_on_an_active_referral_goes_to_partner_center_through_a_crm_message() -> None:
    pc, crm = referral(status="Active", substatus="Accepted"), record(stage={"stage_name": "Qualification"})
    link = linked(pc, crm)
    edited = record(stage={"stage_name": "Qualification"}, notes="Workshop booked", modified_at=EARLY)
    result = preview(pc, edited, link)
    assert actions(result)["notes"] == "CRM -> Partner Center"
    assert isinstance(result.message, CrmChange) and result.message.record_id == "006A"  # the CRM side moved


def test_a_seller_edit_waits_while_the_referral_is_pending() -> None:
    pc, crm = referral(), record()
    result = preview(pc, record(notes="Workshop booked"), linked(pc, crm))
    assert (
        actions(result)["notes"]
        == "CRM -> Partner Center once the referral is accepted (it is pending in Partner Center)"
    )
    assert result.message is not None


def test_both_sides_changed_the_later_change_wins() -> None:
    pc, crm = referral(), record()
    link = linked(pc, crm)
    newer = referral(
        details={**REFERRAL["details"], "dealValue": 150000}, eTag='"2"', updatedDateTime="2026-05-01T10:00:00Z"
    )
    result = preview(newer, record(deal_value=Decimal(175000), modified_at=EARLY), link)
    assert actions(result)["deal_value"] == "conflict: both changed; keeps the Partner Center value (changed later)"
    assert isinstance(result.message, PartnerCenterChange)  # Partner Center's ETag moved: that message looks


def test_values_stored_differently_are_reported_but_queue_nothing() -> None:
    pc, crm = referral(), record(notes="typed differently in the CRM")
    result = preview(pc, crm, linked(pc, crm))
    assert actions(result)["notes"].startswith("nothing: neither side changed it since the last sync")
    assert actions(result)["engagement_id"] == "Partner Center -> CRM with the next sync of this pair"
    assert result.message is None and result.action == "nothing: the differences are not changes"


def test_what_a_new_referral_or_record_would_become() -> None:
    assert preview(referral(), None, None).action == "create a CRM opportunity"
    closed = preview(referral(status="Closed", substatus="Won"), None, None)
    assert closed.action.startswith("nothing: closed in Partner Center") and closed.message is None
    german = CrmAccount(id="001A", name="Contoso", postal_code="10115", country="DE")
    assert preview(None, record(account=german), None).action == "create a Partner Center referral"
    incomplete = preview(None, record(account=german, deal_value=None), None)
    assert incomplete.action.startswith("mark the record Error: not sent to Partner Center:")
    assert isinstance(incomplete.message, CrmChange)
    lead = preview(None, record(ref=CrmRef(kind="lead", id="00Q1")), None)
    assert lead.message is None


def test_orphans() -> None:
    orphan = record(connector=ConnectorFields(sync_enabled=True, referral_id="gone"))
    marked = preview(None, orphan, None, referral_missing=True)
    assert marked.action == "mark the record Error: the referral it names does not exist in Partner Center"
    pc, crm = referral(), record()
    link = linked(pc, crm).model_copy(update={"last_error": "Not synced: the CRM opportunity 006A no longer exists"})
    assert preview(pc, None, link, record_missing=True).message is None
    fresh_link = linked(pc, crm)
    gone = preview(pc, None, fresh_link, record_missing=True)
    assert gone.action.startswith("nothing a sync can fix: the CRM record no longer exists") and gone.message is None
