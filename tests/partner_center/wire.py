"""Partner Center request bodies and JSON Patch for tests, built only through the contract.

A create body comes from `shared.mapping.to_partner_center.new_referral` (what the engine sends);
a PATCH operation from `contract().patch_operation` (refuses a path Partner Center does not take);
an edit by Microsoft's side or another Partner Center user (sandbox controls) from
`contract().member_operation` (any member the definition lists).
"""

from __future__ import annotations

from typing import Any

from shared.mapping.to_partner_center import new_referral
from shared.mapping.views import View
from shared.partner_center.contract import contract

CO_SELL_DEAL: View = {
    "name": "Tailspin Toys - data platform",
    "deal_value": "91000",
    "currency": "EUR",
    "close_date": "2027-05-31",
    "customer": {
        "name": "Tailspin Toys B.V.",
        "street": "Oudegracht 1",
        "city": "Utrecht",
        "postal_code": "3511 AB",
        "country": "NL",
    },
    "contacts": [{"first_name": "Sanne", "last_name": "de Vries", "email": "sanne@tailspin.example"}],
    "solutions": [{"id": "SOL-5678-EFGH", "name": "Contoso Lakehouse Accelerator"}],
    "help_needed": "ProofOfConceptOrDemo",
    "visible": True,
    "solution_area": "Cloud and AI Platforms",
    "solution_play": "Unify your Data Platform",
    "partner_role": "Implementation",
}
"""A co-sell deal as a CRM says it (neutral fields), asking Microsoft for a proof of concept."""


def create_request(crm_record_id: str = "0065g00000AbCdEAAR", **changes: Any) -> dict[str, Any]:
    """The `POST /referrals` body our engine sends for `CO_SELL_DEAL` with `changes` (neutral fields)."""
    return new_referral({**CO_SELL_DEAL, **changes}, crm_record_id=crm_record_id, accept_country_names=False)


def edit(path: str, value: Any, op: str = "replace") -> dict[str, Any]:
    """One JSON Patch operation our client may send (a path the contract lists)."""
    return contract().patch_operation(path, value, op)


def member_edit(path: str, value: Any, op: str = "replace") -> dict[str, Any]:
    """A change by Microsoft's side or a Partner Center user: any member the definition lists."""
    return contract().member_operation(path, value, op)


def shared_by_microsoft(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields of a referral Microsoft shares (sandbox control), each checked against the contract."""
    contract().referral_document(fields)  # refuses a member Partner Center does not have
    return fields
