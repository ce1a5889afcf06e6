"""The engine wired to the in-memory fakes, with one clock for all of them."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shared.crm.port import CrmAccount, CrmCapabilities, CrmContact, CrmRef, CrmSolution, RecordUpdate
from shared.settings import Settings, load_settings
from shared.sync.engine import SyncEngine
from tests.conftest import base_environment
from tests.fakes.clock import FakeClock
from tests.fakes.crm import FakeCrm
from tests.fakes.links import FakeLinkStore
from tests.fakes.partner_center import FakePartnerCenter

SALESFORCE_LIKE = CrmCapabilities(pending_stage="Pending Acceptance", lead_has_name=False)
"""A CRM with a pending stage whose leads have no deal name."""
DYNAMICS_LIKE = CrmCapabilities()
"""A CRM without a pending stage (acceptance is the response field)."""

INCOMING: dict[str, Any] = {
    "name": "Contoso migration",
    "organizationId": "partner",
    "status": "New",
    "substatus": "Pending",
    "type": "Shared",
    "qualification": "SalesQualified",
    "direction": "Incoming",
    "customerProfile": {
        "name": "Contoso",
        "address": {"addressLine1": "1 Main St", "city": "Berlin", "postalCode": "10115", "country": "DE"},
        "team": [{"firstName": "Ada", "lastName": "Lovelace", "email": "ada@contoso.example"}],
    },
    "consent": {"consentToShareReferralWithMicrosoftSellers": True},
    "details": {
        "dealValue": 120000,
        "currency": "EUR",
        "closingDateTime": "2027-03-31T00:00:00Z",
        "notes": "Needs a PoC",
        "requirements": {"solutions": [{"id": "SOL-1", "name": "One"}]},
    },
    "inviteContext": {"assistanceRequestCode": "ProofOfConceptOrDemo", "invitedBy": {"organizationId": "msft"}},
}
"""A co-sell referral Microsoft sends, still to be accepted."""


def incoming(**members: Any) -> dict[str, Any]:
    document = copy.deepcopy(INCOMING)
    document.update(members)
    return document


@dataclass
class World:
    clock: FakeClock
    pc: FakePartnerCenter
    crm: FakeCrm
    links: FakeLinkStore
    engine: SyncEngine

    @classmethod
    def build(
        cls, capabilities: CrmCapabilities = SALESFORCE_LIKE, *, multi_currency: bool = True, **settings: str
    ) -> World:
        clock = FakeClock()
        pc = FakePartnerCenter(clock)
        crm = FakeCrm(clock, capabilities, multi_currency=multi_currency)
        links = FakeLinkStore(clock)
        loaded: Settings = load_settings(base_environment("UseDevelopmentStorage=true", **settings))
        engine = SyncEngine(settings=loaded, state=links, partner_center=pc, crm=crm, clock=clock, sleep=clock.sleep)
        return cls(clock, pc, crm, links, engine)

    def referral_synced(self, document: dict[str, Any] | None = None) -> tuple[str, CrmRef]:
        """A referral arrives and is synced to a new CRM record."""
        referral = self.pc.add(document or incoming())
        assert referral.id is not None
        self.engine.sync_referral(referral.id)
        (record,) = self.crm.by_referral(referral.id)
        self.clock.advance(60)
        return referral.id, record.ref

    def seller_deal(self, *, help_needed: str | None = "ProofOfConceptOrDemo", **fields: Any) -> CrmRef:
        """A seller's opportunity with Sync = Yes and everything a co-sell needs (`fields` override)."""
        account_id = self.crm.find_or_create_account(
            CrmAccount(name="Fabrikam", city="Utrecht", postal_code="3511", country="NL")
        )
        values: dict[str, Any] = {
            "name": "Fabrikam rollout",
            "deal_value": Decimal(91000),
            "currency": "EUR",
            "close_date": "2027-05-31",
            "notes": "Seller notes",
            "account_id": account_id,
            "sync_enabled": True,
            "help_needed": help_needed,
            "visible_to_microsoft": True,
            "solution_area": "Cloud and AI Platforms",
            "solution_play": "Migrate and Modernize your Estate",
            "partner_role": "Implementation",
        }
        values.update(fields)
        contacts = values.pop("contacts", [CrmContact(last_name="Akers", email="kim@fabrikam.example")])
        solutions = values.pop("solutions", [CrmSolution(solution_id="SOL-7", name="Seven")])
        ref = self.crm.seller_creates(
            "opportunity", RecordUpdate(**values), owner_name="Sam Seller", owner_email="sam@partner.example"
        )
        self.crm.set_contacts(ref, [self.crm.find_or_create_contact(item, account_id) for item in contacts])
        self.crm.set_solutions(ref, solutions)
        self.clock.advance(1)
        return ref

    def seller_edits(self, ref: CrmRef, **values: Any) -> None:
        self.clock.advance(5)
        self.crm.seller_edits(ref, RecordUpdate(**values))
        self.engine.sync_crm_record(ref)
        self.clock.advance(5)

    def pc_edits(self, referral_id: str, **members: Any) -> None:
        self.clock.advance(5)
        self.pc.edit(referral_id, **members)
        self.engine.sync_referral(referral_id)
        self.clock.advance(5)

    def audit(self, ref: CrmRef) -> str:
        return self.crm.read(ref).connector.audit
