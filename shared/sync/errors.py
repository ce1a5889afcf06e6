"""One error policy: every failure of a sync is Transient, Permanent or NeedsAdmin.

- **Transient** (throttling, 5xx, timeouts, races that kept losing): the message goes back to the
  queue, which retries it with back-off.
- **Permanent** (data Partner Center or the CRM refuses): the engine records it on the CRM record
  and the link, once, and does not retry (shared/sync/engine.py).
- **NeedsAdmin** (a revoked or missing sign-in, a missing permission, a schema not provisioned):
  no retry can fix it, so the message is dead-lettered at once with a reason an admin can act on,
  and health shows it (shared/admin/health.py) instead of the queue burning its deliveries first.

Anything not recognised is treated as Transient: retrying something we do not understand is safe
(the engine is idempotent), and the poison handler still records why it finally died.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.crm.port import CrmAuthError, CrmSetupError, CrmTransientError, CrmValidationError
from shared.partner_center.auth import SignInRequired
from shared.partner_center.client import PartnerCenterAuthError, PartnerCenterError
from shared.settings import SettingsError

NEEDS_ADMIN = "Needs an admin: "
"""How a NeedsAdmin dead letter's reason starts (health looks for it)."""


class ErrorKind(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    NEEDS_ADMIN = "needs_admin"


@dataclass(frozen=True)
class Classified:
    kind: ErrorKind
    reason: str
    """In words an admin can act on (NeedsAdmin), or the error itself."""
    retry_after_seconds: float | None = None


def needs_admin(error: BaseException) -> bool:
    return classify(error).kind is ErrorKind.NEEDS_ADMIN


def classify(error: BaseException) -> Classified:
    text = f"{type(error).__name__}: {error}"
    admin = _admin_reason(error)
    if admin is not None:
        return Classified(ErrorKind.NEEDS_ADMIN, NEEDS_ADMIN + admin)
    if isinstance(error, CrmTransientError):
        return Classified(ErrorKind.TRANSIENT, text, error.retry_after_seconds)
    if isinstance(error, CrmValidationError) or (isinstance(error, PartnerCenterError) and not error.transient):
        return Classified(ErrorKind.PERMANENT, text)
    return Classified(ErrorKind.TRANSIENT, text)


def _admin_reason(error: BaseException) -> str | None:
    if isinstance(error, SignInRequired):
        return (
            f"the Partner Center sign-in is missing or revoked ({error}); run `python -m shared partner-center login`"
        )
    if isinstance(error, PartnerCenterAuthError):
        return (
            f"Partner Center refused our sign-in (HTTP {error.status}: {error}); check that the signed-in account "
            "still has the Referrals Admin role, then run `python -m shared partner-center login`"
        )
    if isinstance(error, CrmAuthError):
        return (
            f"the CRM refused the integration user's sign-in ({error}); check the CRM credentials in the app settings"
        )
    if isinstance(error, CrmSetupError):
        return (
            f"the CRM refused access to a field or object ({error}); deploy the connector's schema and permission "
            "set (docs/deploy.md) and check the integration user's permissions"
        )
    if isinstance(error, SettingsError):
        return f"the app settings are invalid ({error}); fix them and restart (`python -m shared doctor`)"
    return None
