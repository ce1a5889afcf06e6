"""The Partner Center webhook envelope (reference 2.3): a tiny notice, never the referral itself."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

REFERRAL_EVENTS = frozenset(
    {"referral-created", "referral-updated", "related-referral-created", "related-referral-updated"}
)
TEST_EVENT = "test-created"

_REFERRAL_ID = re.compile(r"/referrals/([^/?#\s]+)/?$")
_NAMES = ("EventName", "ResourceUri", "ResourceName", "AuditUri", "ResourceChangeUtcDate")


class WebhookEvent(BaseModel):
    """`{"EventName", "ResourceUri", "ResourceName", "AuditUri", "ResourceChangeUtcDate"}`.

    Property names are matched case-insensitively (docs use PascalCase, REST reference camelCase);
    `AuditUrl` (the docs' model table) is read as `AuditUri`.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    EventName: str = Field(min_length=1, max_length=100)
    ResourceUri: str | None = Field(default=None, max_length=2000)
    ResourceName: str | None = None
    AuditUri: str | None = None
    ResourceChangeUtcDate: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _case_insensitive(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        canonical = {name.lower(): name for name in _NAMES} | {"auditurl": "AuditUri"}
        return {canonical.get(str(key).lower(), key): value for key, value in data.items()}

    @property
    def is_referral_event(self) -> bool:
        return self.EventName in REFERRAL_EVENTS

    def referral_id(self) -> str | None:
        """The id at the end of `.../referrals/{id}` in ResourceUri, or None."""
        match = _REFERRAL_ID.search(self.ResourceUri or "")
        return match.group(1) if match else None
