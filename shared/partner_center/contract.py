"""Microsoft's published Partner Center Referrals contract, read from `contract.json` beside this file.

One place for the facts our client, our mapping and our sandbox simulator must agree on: the
patchable JSON Patch paths, the enums and status transitions, the members of a referral, what a
create must carry, the list options, the error codes, the MFA error and the webhook answers. The
data file says where each fact comes from and where the sources disagree or are silent; this
module only loads it (once, on first use) and answers questions about it.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONTRACT_FILE = Path(__file__).with_name("contract.json")


@dataclass(frozen=True)
class Contract:
    data: dict[str, Any]

    # ---- JSON Patch -------------------------------------------------------------------------------
    @property
    def patch_paths(self) -> frozenset[str]:
        return frozenset(self.data["patch"]["paths"])

    @property
    def patch_operations(self) -> tuple[str, ...]:
        return tuple(self.data["patch"]["operations"])

    def is_patchable(self, path: str) -> bool:
        """Does Partner Center accept a JSON Patch on `path` (exactly, or an append `/-` listed)?"""
        return path in self.patch_paths

    def refused_path_error(self, path: str) -> tuple[int, str, str]:
        """(status, code, message) of Partner Center's answer to a PATCH on an unlisted path."""
        refused = self.data["patch"]["refused"]
        return int(refused["status"]), str(refused["code"]), str(refused["message"]).format(path=path)

    def patch_operation(self, path: str, value: Any, op: str = "replace") -> dict[str, Any]:
        """One JSON Patch operation our side may send; refuses a path or operation the contract lacks."""
        if op not in self.patch_operations:
            raise ValueError(f"JSON Patch operation {op!r} is not accepted by Partner Center")
        if not self.is_patchable(path):
            raise ValueError(f"{path} is not a patchable Partner Center path")
        return {"op": op, "path": path, "value": value}

    def has_member(self, path: str) -> bool:
        """Is `path` (a JSON pointer, list indexes and `-` allowed) a member the definition lists?"""
        node: Any = self.data["referral_members"]
        for part in path.strip("/").split("/"):
            if isinstance(node, list):
                # An item of a list: the members data does not spell out list items, so any below.
                return part == "-" or part.isdigit()
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def member_operation(self, path: str, value: Any, op: str = "replace") -> dict[str, Any]:
        """A JSON Patch on any listed member: what Microsoft's side or a Partner Center user may change
        (sandbox controls), which is wider than what our API calls may patch."""
        if not self.has_member(path):
            raise ValueError(f"{path} is not a member of a Partner Center referral")
        return {"op": op, "path": path, "value": value}

    def referral_document(self, values: dict[str, Any]) -> dict[str, Any]:
        """A referral as Partner Center would hold it: `values` over every listed member; refuses a
        member the definition does not list (so a typo cannot pass as a field)."""

        def merge(template: Any, given: Any, where: str) -> Any:
            if not (isinstance(given, dict) and isinstance(template, dict)):
                return copy.deepcopy(given)  # a leaf, a list, or a member the definition leaves open
            base = dict(template)
            for key, item in given.items():
                if key not in template:
                    raise ValueError(f"{where}/{key} is not a member of a Partner Center referral")
                base[key] = merge(template[key], item, f"{where}/{key}")
            return base

        return dict(merge(self.referral_members(), values, ""))

    # ---- values -----------------------------------------------------------------------------------
    def enum(self, name: str) -> tuple[str, ...]:
        return tuple(self.data["enums"][name])

    def substatuses(self, status: str) -> frozenset[str]:
        return frozenset(self.data["transitions"].get(status, {}).get("substatus", ()))

    def next_statuses(self, status: str) -> frozenset[str]:
        return frozenset(self.data["transitions"].get(status, {}).get("next", ()))

    @property
    def transition_statuses(self) -> frozenset[str]:
        return frozenset(self.data["transitions"])

    def referral_members(self) -> dict[str, Any]:
        """Every member of a referral as the definition lists it, null (or []) where unknown: a fresh copy."""
        return copy.deepcopy(self.data["referral_members"])

    # ---- create -----------------------------------------------------------------------------------
    @property
    def create(self) -> dict[str, Any]:
        return dict(self.data["create"])

    def consent_on_create(self, *, shared: bool) -> dict[str, bool]:
        """The consent flags a new referral carries. Sharing with Microsoft sellers (partner-led and
        co-sell deals) also consents to Microsoft contacting and sharing with the partners it involves."""
        return {flag: shared for flag in self.data["create"]["consent_flags"]}

    def marketplace_intent(self, value: str | None = None) -> dict[str, str]:
        """The `additionalRequirements.attributes` item that states the customer's marketplace intent."""
        intent = self.data["create"]["marketplace_intent"]
        chosen = value or intent["default"]
        if chosen not in intent["values"]:
            raise ValueError(f"marketplace intent {chosen!r} is not one of {', '.join(intent['values'])}")
        return {"id": chosen, "type": intent["type"]}

    def has_marketplace_intent(self, referral: dict[str, Any]) -> bool:
        intent_type = self.data["create"]["marketplace_intent"]["type"]
        details = referral.get("details") or {}
        additional = (details.get("requirements") or {}).get("additionalRequirements") or {}
        attributes = additional.get("attributes") or []
        return any(isinstance(item, dict) and item.get("type") == intent_type for item in attributes)

    # ---- list, related referrals ------------------------------------------------------------------
    @property
    def list_options(self) -> frozenset[str]:
        return frozenset(self.data["list"]["options"])

    @property
    def list_page_size(self) -> int:
        return int(self.data["list"]["page_size"])

    @property
    def filter_fields(self) -> frozenset[str]:
        return frozenset(self.data["list"]["filter_fields"])

    @property
    def orderby_fields(self) -> frozenset[str]:
        return frozenset(self.data["list"]["orderby"])

    @property
    def expandable(self) -> frozenset[str]:
        return frozenset(self.data["list"]["expandable"])

    def related_referrals_filter(self, engagement_id: str) -> str:
        """The `$filter` of one engagement's referrals, the id unquoted as real payloads carry it."""
        return str(self.data["related_referrals"]["filter"]).format(engagement_id=engagement_id)

    # ---- errors, MFA, registration, webhooks ------------------------------------------------------
    def error_code(self, status: int) -> str:
        codes: dict[str, str] = self.data["errors"]["codes"]
        return codes.get(str(status), codes["500"])

    @property
    def mfa_error_code(self) -> str:
        return str(self.data["mfa"]["error_code"])

    def has_mfa_claim(self, claims: dict[str, Any]) -> bool:
        values = claims.get(self.data["mfa"]["claim"]) or []
        return self.data["mfa"]["claim_value"] in (values if isinstance(values, list) else [values])

    @property
    def registration_create_status(self) -> int:
        return int(self.data["registration"]["create_status"])

    @property
    def registration_update_status(self) -> int:
        return int(self.data["registration"]["update_status"])

    @property
    def webhook_answer_status(self) -> int:
        return int(self.data["webhook"]["answer_status"])

    @property
    def webhook_issuer_organization(self) -> str:
        return str(self.data["webhook"]["issuer_organization"])

    def validation_result_ok(self, response_code: Any) -> bool:
        """A validation-event attempt's `responseCode`: text ("OK") or a number (200); any 2xx is success."""
        if isinstance(response_code, bool):
            return False
        if isinstance(response_code, int):
            return 200 <= response_code < 300
        text = str(response_code or "").strip()
        if text.isdigit():
            return 200 <= int(text) < 300
        return text.upper() in {str(item).upper() for item in self.data["webhook"]["validation_result_ok"]}


@functools.cache
def contract() -> Contract:
    """The contract, loaded once per process."""
    try:
        data = json.loads(CONTRACT_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RuntimeError(f"the Partner Center contract {CONTRACT_FILE} cannot be read: {error}") from error
    return Contract(data)
