"""The harness itself, without the sync engine: the drivers act through the simulators as a
seller / Microsoft would, and the control routes added for the scenarios follow the reference."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from sandbox.azurite import Azurite
from sandbox.simulators import SandboxServices
from shared.http import tls_context
from shared.partner_center.auth import PartnerCenterAuth
from shared.settings import Settings, load_settings
from tests.conftest import base_environment
from tests.e2e.sync.drivers import (
    Account,
    CallLog,
    Contact,
    DynamicsSeller,
    SalesforceSeller,
    Seller,
    SimulatorControl,
    Solution,
    cosell_referral,
    pc_edit,
    tag,
    unique,
)
from tests.partner_center.wire import create_request

pytestmark = [pytest.mark.sandbox]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    from sandbox.tls import ensure_ca

    with httpx.Client(verify=tls_context(str(ensure_ca().cert_path)), timeout=30) as client:
        yield client


def _settings(services: SandboxServices, crm: str) -> Settings:
    return load_settings(base_environment("UseDevelopmentStorage=true", **services.app_settings(), CRM_KIND=crm))


@pytest.fixture(params=["salesforce", "dynamics"])
def seller(request: pytest.FixtureRequest, sandbox_services: SandboxServices, http: httpx.Client) -> Seller:
    crm = str(request.param)
    settings = _settings(sandbox_services, crm)
    if crm == "salesforce":
        control = SimulatorControl(crm, sandbox_services.salesforce.url, http)
        return SalesforceSeller(control, settings, CallLog(), multi_currency=False)
    return DynamicsSeller(SimulatorControl(crm, sandbox_services.dataverse.url, http), settings, CallLog())


def test_a_seller_builds_a_complete_opportunity_and_closes_it(seller: Seller) -> None:
    account = seller.create_account(Account(name=unique("Tailspin")))
    contact = seller.create_contact(Contact("Sanne", "de Vries", f"sanne.{tag()}@tailspin.example"), account)
    name = unique("Lakehouse")
    opportunity = seller.create_opportunity(
        name,
        account_id=account,
        contact_ids=[contact],
        solutions=[Solution("SOL-A", "Lakehouse Accelerator"), Solution("SOL-B", "Data Mesh")],
        deal_value=Decimal(91000),
        currency="EUR",
        close_date=dt.date(2027, 5, 31),
        notes="PoC in January",
        help_needed="ProofOfConceptOrDemo",
        visible=True,
    )
    seller.remove_solution("opportunity", opportunity, "SOL-B")
    raw = seller.raw("opportunity", opportunity)
    assert raw.name == name and raw.sync_enabled and raw.visible and not raw.closed
    assert raw.modified_by_seller  # the poller must not mistake it for the integration's own write
    seller.close(opportunity, won=False)
    closed = seller.raw("opportunity", opportunity)
    assert closed.closed and not closed.won


def _partner_center(sandbox_services: SandboxServices, http: httpx.Client) -> SimulatorControl:
    return SimulatorControl("partner-center", sandbox_services.partner_center.url, http)


def test_partner_center_expires_an_unanswered_referral(sandbox_services: SandboxServices, http: httpx.Client) -> None:
    control = _partner_center(sandbox_services, http)
    referral = control.post("incoming-referral", cosell_referral())
    expired = control.post(f"referrals/{referral['id']}/expire")
    assert (expired["status"], expired["substatus"]) == ("Closed", "Expired")
    assert expired["eTag"] != referral["eTag"] and expired["updatedDateTime"] > referral["updatedDateTime"]
    again = http.post(f"{control.base_url}/_sandbox/referrals/{referral['id']}/expire")
    assert again.status_code == 400 and again.json()["error"]["code"] == "invalidRequest"


@pytest.mark.azurite
def test_an_edit_lands_right_after_the_next_read(
    sandbox_services: SandboxServices, http: httpx.Client, azurite: Azurite
) -> None:
    control = _partner_center(sandbox_services, http)
    referral = control.post("incoming-referral", cosell_referral())
    edit = [pc_edit("/details/notes", "edited by a colleague")]
    control.post(f"referrals/{referral['id']}/edit-after-next-read", edit)
    assert control.state()["scheduled_edits"]["pending"] == {referral["id"]: edit}

    environment = base_environment(azurite.connection_string, **sandbox_services.app_settings())
    settings = load_settings(environment)
    auth = PartnerCenterAuth.from_settings(settings)
    auth.login(show=lambda _message: None)
    url = f"{settings.pc_api_base_url}/referrals/{referral['id']}"
    headers = {"Authorization": f"Bearer {auth.token(settings.pc_api_scope)}"}
    read = http.get(url, headers=headers)
    assert read.status_code == 200 and read.json()["details"]["notes"] != "edited by a colleague"
    stale = http.patch(
        url,
        json=[pc_edit("/details/dealValue", 1)],
        headers={**headers, "If-Match": read.json()["eTag"]},
    )
    assert stale.status_code == 412 and stale.json()["error"]["code"] == "preconditionFailed"
    assert http.get(url, headers=headers).json()["details"]["notes"] == "edited by a colleague"
    state = control.state()
    assert state["scheduled_edits"] == {"pending": {}, "done": [{"referral_id": referral["id"], "applied": True}]} or (
        {"referral_id": referral["id"], "applied": True} in state["scheduled_edits"]["done"]
    )
    patches = [item for item in state["patches"] if item["referral_id"] == referral["id"]]
    assert patches == [
        {
            "referral_id": referral["id"],
            "if_match": read.json()["eTag"],
            "operations": [pc_edit("/details/dealValue", 1)],
            "status": 412,
        }
    ]


@pytest.mark.azurite
def test_a_late_answer_stores_the_referral_before_answering(
    sandbox_services: SandboxServices, http: httpx.Client, azurite: Azurite
) -> None:
    control = _partner_center(sandbox_services, http)
    control.post("referrals/answer-late", {"seconds": 1.5, "count": 1})
    settings = load_settings(base_environment(azurite.connection_string, **sandbox_services.app_settings()))
    auth = PartnerCenterAuth.from_settings(settings)
    auth.login(show=lambda _message: None)
    external_id = f"late-{tag()}"
    body = create_request(crm_record_id=external_id, name="Late answer")
    headers = {"Authorization": f"Bearer {auth.token(settings.pc_api_scope)}"}
    with pytest.raises(httpx.TimeoutException):
        http.post(f"{settings.pc_api_base_url}/referrals", json=body, headers=headers, timeout=0.5)
    stored = [item for item in control.state()["referrals"] if item.get("externalReferenceId") == external_id]
    assert len(stored) == 1  # created although the caller never heard of it
    bad = http.post(f"{control.base_url}/_sandbox/referrals/answer-late", json={"seconds": 0})
    assert bad.status_code == 400
