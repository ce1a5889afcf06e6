"""The connector's business rules, as pure functions (SPEC 1.2, 1.3; reference 1.4, 1.5).

- which CRM object a referral becomes;
- what Partner Center needs before a referral may be created or updated (checked before any call,
  with messages a seller can act on; each field's check lives in its registry entry,
  shared/mapping/fields.py).

Status rules are in shared/mapping/status.py.
"""

from __future__ import annotations

from shared.crm.port import CrmObjectKind
from shared.mapping.fields import FIELDS, View, asks_microsoft_for_help
from shared.mapping.taxonomy import taxonomy
from shared.model.referral import Referral

__all__ = ["asks_microsoft_for_help", "crm_object_for", "partner_center_problems"]


def crm_object_for(referral: Referral) -> CrmObjectKind:
    """Lead-sharing referrals become leads; co-sell and pipeline referrals opportunities (reference 1.5)."""
    return "lead" if referral.kind() in ("marketplace_lead", "qualified_lead") else "opportunity"


def partner_center_problems(view: View, *, accept_country_names: bool, creating: bool = False) -> list[str]:
    """What stops Partner Center from accepting this deal, in words a seller can act on.

    `view` is the neutral view of what would be sent. Every referral needs a name and a customer
    with a two-letter country; a co-sell (help requested) also needs a valid help value, a customer
    contact with an email, at least one solution, a deal value above 0 with a currency, a close
    date (SPEC 1.3), and a current Solution Area, Solution Play (of that area) and Partner Role
    (shared/partner_center/taxonomy) when `creating` it (Partner Center takes those on create only). A field the view has no opinion on (a single-currency CRM's currency) is not
    checked.
    """
    checked = {"every", "cosell"} if asks_microsoft_for_help(view) else {"every"}
    if creating and "cosell" in checked:
        checked.add("new_cosell")
    problems: list[str] = []
    for spec in FIELDS:
        if spec.problems is not None and spec.required_for in checked and spec.name in view:
            problems.extend(spec.problems(view[spec.name], accept_country_names))
    if "new_cosell" in checked:
        problems.extend(taxonomy().play_problems(view.get("solution_area"), view.get("solution_play")))
    return problems
