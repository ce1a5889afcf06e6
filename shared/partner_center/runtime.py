"""Process-wide Partner Center collaborators, built on first use (never at import).

The function app's triggers call these; `reset()` forgets them (the lead's `bootstrap.reset()`
should call it after the environment changes).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from shared.settings import get_settings

if TYPE_CHECKING:
    from shared.partner_center.auth import PartnerCenterAuth
    from shared.partner_center.webhook import SignatureVerifier


@functools.cache
def webhook_verifier() -> SignatureVerifier:
    from shared.partner_center.webhook import SignatureVerifier

    return SignatureVerifier.from_settings(get_settings())


@functools.cache
def auth() -> PartnerCenterAuth:
    from shared.partner_center.auth import PartnerCenterAuth

    return PartnerCenterAuth.from_settings(get_settings())


def reset() -> None:
    webhook_verifier.cache_clear()
    auth.cache_clear()
