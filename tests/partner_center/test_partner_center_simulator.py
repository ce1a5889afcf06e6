"""Contract tests of the Partner Center simulator with plain httpx (reference/partner-center-api.md)."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from sandbox.partner_center import PartnerCenterSimulator
from sandbox.server import RunningServer
from shared.http import tls_context
from shared.partner_center.contract import contract
from tests.partner_center.wire import create_request, edit, member_edit, shared_by_microsoft
from tests.waiting import wait_until

# Copies of reference/examples (hand-made in the documented wire shapes).
EXAMPLES = Path(__file__).parent / "examples"


def example(name: str) -> Any:
    return json.loads((EXAMPLES / name).read_text())


@pytest.fixture
def api(
    pc_server: RunningServer, partner_center: PartnerCenterSimulator, pc_token: str, ca_bundle: str
) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{pc_server.url}/v1.0/engagements",
        headers={"Authorization": f"Bearer {pc_token}"},
        verify=tls_context(ca_bundle),
    ) as client:
        yield client


def test_requests_without_a_valid_token_are_401(api: httpx.Client, webhook_api_token: str) -> None:
    missing = api.get("/referrals", headers={"Authorization": ""})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthenticated"
    wrong_audience = api.get("/referrals", headers={"Authorization": f"Bearer {webhook_api_token}"})
    assert wrong_audience.status_code == 401
    assert "audience" in wrong_audience.json()["error"]["message"]


def test_create_get_and_documented_validation(api: httpx.Client) -> None:
    created = api.post("/referrals", json=create_request())
    assert created.status_code == 200
    body = created.json()
    assert body["status"] == "Active" and body["substatus"] == "Accepted" and body["direction"] == "Outgoing"
    assert body["eTag"].startswith('"') and body["eTag"].endswith('"')
    fetched = api.get(f"/referrals/{body['id']}").json()
    assert fetched == body

    bad_country = create_request()
    bad_country["customerProfile"]["address"]["country"] = "Netherlands"  # deliberately invalid
    refused = api.post("/referrals", json=bad_country)
    assert refused.status_code == 400
    assert refused.json() == example("errors.json")["partner_center_400_country"]["body"]

    no_contact = create_request(contacts=[])
    assert api.post("/referrals", json=no_contact).json()["error"]["target"] == "customerProfile.team"
    no_solution = copy.deepcopy(create_request())
    no_solution["details"]["requirements"]["solutions"] = [{"name": "no id"}]
    assert api.post("/referrals", json=no_solution).json()["error"]["message"] == "Solution ID is required."
    no_intent = copy.deepcopy(create_request())
    del no_intent["details"]["requirements"]["additionalRequirements"]
    refused_intent = api.post("/referrals", json=no_intent)
    assert refused_intent.status_code == 400
    assert refused_intent.json()["error"]["target"] == "details.requirements.additionalRequirements"
    no_consent = {key: value for key, value in create_request().items() if key != "consent"}
    assert api.post("/referrals", json=no_consent).json()["error"]["target"] == "consent"

    missing = api.get("/referrals/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "itemNotFound"


def test_a_services_cosell_without_a_current_fy26_value_is_refused(api: httpx.Client) -> None:
    no_role = create_request(partner_role=None)
    refused = api.post("/referrals", json=no_role)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["code"], error["target"]) == ("invalidRequest", "partnerRole")
    assert error["message"] == "partnerRole is required for a services co-sell referral (FY26 taxonomy)."
    retired = api.post("/referrals", json=create_request(solution_area="Modern Work"))
    assert retired.status_code == 400
    assert retired.json()["error"]["message"] == "'Modern Work' is not a valid solutionArea for FY26."
    # the other plausible form (contract.json's note): typed additionalRequirements attributes
    as_attributes = create_request(solution_play=None)
    as_attributes["details"]["requirements"]["additionalRequirements"]["attributes"].append(
        {"id": "Unify your Data Platform", "type": "SolutionPlay"}
    )
    created = api.post("/referrals", json=as_attributes)
    assert created.status_code == 200, created.text
    assert created.json()["solutionArea"] == "Cloud and AI Platforms"
    private = create_request(help_needed=None, visible=False, solution_area=None, solution_play=None, partner_role=None)
    assert api.post("/referrals", json=private).status_code == 200


def test_patch_if_match_prefer_and_transitions(api: httpx.Client) -> None:
    referral = api.post("/referrals", json=create_request()).json()
    path = f"/referrals/{referral['id']}"

    update = [edit("/details/dealValue", 95000), edit("/details/closingDateTime", "2027-06-30T00:00:00Z")]
    no_body = api.patch(path, json=update, headers={"If-Match": referral["eTag"]})
    assert no_body.status_code == 204 and no_body.content == b""
    assert no_body.headers["ETag"] != referral["eTag"]

    stale = api.patch(path, json=update, headers={"If-Match": referral["eTag"]})
    assert stale.status_code == 412
    assert stale.json() == example("errors.json")["partner_center_412"]["body"]

    updated = api.patch(
        path,
        json=[edit("/details/notes", "new notes")],
        headers={"Prefer": "return=representation"},
    )
    assert updated.status_code == 200
    assert updated.json()["details"]["notes"] == "new notes"
    assert updated.json()["details"]["dealValue"] == 95000
    assert updated.json()["updatedDateTime"] > referral["updatedDateTime"]

    remove = api.patch(path, json=[{"op": "remove", "path": "/details/notes"}])  # deliberately outside the contract
    assert remove.status_code == 400 and remove.json()["error"]["code"] == "invalidRequest"

    back_to_new = api.patch(path, json=[edit("/status", "New")])
    assert back_to_new.status_code == 400

    hide = api.patch(path, json=[edit("/consent/consentToShareReferralWithMicrosoftSellers", False)])
    assert hide.status_code == 400

    won = api.patch(
        path,
        json=[edit("/status", "Closed"), edit("/substatus", "Won")],
        headers={"Prefer": "return=representation"},
    )
    assert won.status_code == 200 and won.json()["closedDateTime"]
    terminal = api.patch(path, json=[edit("/details/notes", "too late")])
    assert terminal.status_code == 400 and "closed" in terminal.json()["error"]["message"]


def test_put_requires_if_match(api: httpx.Client) -> None:
    referral = api.post("/referrals", json=create_request()).json()
    changed = {**referral, "name": "renamed"}
    assert api.put(f"/referrals/{referral['id']}", json=changed).status_code == 400
    ok = api.put(f"/referrals/{referral['id']}", json=changed, headers={"If-Match": referral["eTag"]})
    assert ok.status_code == 204
    assert api.get(f"/referrals/{referral['id']}").json()["name"] == "renamed"


def test_paging_filter_and_orderby(api: httpx.Client, partner_center: PartnerCenterSimulator, ca_bundle: str) -> None:
    seeded = httpx.post(
        f"{partner_center.base_url}/_sandbox/referrals",
        json=[create_request() for _ in range(250)],
        verify=tls_context(ca_bundle),
    )
    assert seeded.status_code == 201
    first = api.get("/referrals", params={"$orderby": "updatedDateTime"}).json()
    assert first["@odata.count"] == 250 and len(first["value"]) == 100
    seen = [item["id"] for item in first["value"]]
    link = first["@odata.nextLink"]
    while link:
        page = api.get(link).json()
        seen += [item["id"] for item in page["value"]]
        link = page.get("@odata.nextLink")
    assert len(seen) == len(set(seen)) == 250

    middle = partner_center.referrals[seen[200]]["updatedDateTime"]
    recent = api.get("/referrals", params={"$filter": f"updatedDateTime ge {middle}"}).json()
    assert recent["@odata.count"] == 50
    top = api.get("/referrals", params={"$top": "10", "$filter": "(direction eq 'Outgoing' and status eq 'New')"})
    assert len(top.json()["value"]) == 10 and "@odata.nextLink" not in top.json()
    unsupported = api.get("/referrals", params={"$filter": "name eq 'x'"})
    assert unsupported.status_code == 400


def test_injected_429_uses_the_documented_body(api: httpx.Client, pc_server: RunningServer, ca_bundle: str) -> None:
    httpx.post(
        f"{pc_server.url}/_sandbox/faults",
        json={"path_prefix": "/v1.0/engagements/referrals", "status": 429, "retry_after": 1, "count": 1},
        verify=tls_context(ca_bundle),
    ).raise_for_status()
    throttled = api.get("/referrals")
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
    assert throttled.json()["statusCode"] == 429
    assert api.get("/referrals").status_code == 200


@pytest.fixture
def registration_api(pc_server: RunningServer, webhook_api_token: str, ca_bundle: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{pc_server.url}/webhooks/v1",
        headers={"Authorization": f"Bearer {webhook_api_token}"},
        verify=tls_context(ca_bundle),
    ) as client:
        yield client


def test_registration_is_one_per_tenant(registration_api: httpx.Client, partner_center: PartnerCenterSimulator) -> None:
    assert registration_api.get("/registration").status_code == 404
    body = {"WebhookUrl": "https://example.test/api/partner-center/events", "WebhookEvents": ["referral-created"]}
    created = registration_api.post("/registration", json=body)
    assert created.status_code == 200 and created.json()["WebhookUrl"] == body["WebhookUrl"]  # [L-wh]: 200
    again = registration_api.post("/registration", json=body)
    assert again.status_code == 400 and "description" in again.json()
    replaced = registration_api.put(
        "/registration", json={"webhookUrl": "https://other.test/x", "webhookEvents": ["test-created"]}
    )
    assert replaced.status_code == 200
    assert registration_api.get("/registration").json()["WebhookEvents"] == ["test-created"]
    assert (
        registration_api.put(
            "/registration", json={"WebhookUrl": "ftp://x", "WebhookEvents": ["test-created"]}
        ).status_code
        == 400
    )


class _Receiver:
    """A plain-http webhook receiver answering the statuses it is told to."""

    def __init__(self) -> None:
        from sandbox.server import Request, Response, Simulator, serve

        receiver = self

        class Sink(Simulator):
            name = "sink"

            def handle(self, request: Request) -> Response:
                receiver.received.append(request)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                return Response(status, b"")

        self.received: list[Request] = []
        self.statuses: list[int] = []
        self.server = serve(lambda url: Sink(url), port=0, tls=False)
        self.url = f"{self.server.url}/api/partner-center/events"


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    sink = _Receiver()
    try:
        yield sink
    finally:
        sink.server.stop()


def test_signed_delivery_with_retries_and_drop(
    api: httpx.Client,
    registration_api: httpx.Client,
    partner_center: PartnerCenterSimulator,
    receiver: _Receiver,
    ca_bundle: str,
) -> None:
    registration_api.post(
        "/registration", json={"WebhookUrl": receiver.url, "WebhookEvents": ["referral-created", "referral-updated"]}
    )
    receiver.statuses = [500, 503]
    referral = api.post("/referrals", json=create_request()).json()
    wait_until(lambda: len(receiver.received) >= 3, timeout=10, what="three delivery attempts")
    delivered = receiver.received[-1]
    envelope = json.loads(delivered.body)
    assert envelope["EventName"] == "referral-created"
    assert envelope["ResourceUri"].endswith(f"/engagements/v1/referrals/{referral['id']}")
    assert delivered.header("x-ms-signature-algorithm") == "rsa-sha256"
    scheme, _, signature = (delivered.header("authorization") or "").partition(" ")
    assert scheme == "Signature"
    certificate_der = httpx.get(delivered.header("x-ms-certificate-url") or "", verify=tls_context(ca_bundle)).content
    certificate = x509.load_der_x509_certificate(certificate_der)
    organization = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert organization == "Microsoft Corporation"
    public_key = certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(base64.b64decode(signature), delivered.body, padding.PKCS1v15(), hashes.SHA256())
    state = partner_center.state()["deliveries"][0]
    wait_until(lambda: partner_center.state()["deliveries"][0]["status"] == "delivered", timeout=5, what="delivered")
    attempts = partner_center.state()["deliveries"][0]["attempts"]
    assert [attempt["httpStatus"] for attempt in attempts] == [500, 503, 200]
    assert [attempt["responseCode"] for attempt in attempts] == ["InternalServerError", "ServiceUnavailable", "OK"]
    assert state["event"] == "referral-created"

    dropped_before = len(receiver.received)
    httpx.post(
        f"{partner_center.base_url}/_sandbox/webhooks/drop", json={"count": 1}, verify=tls_context(ca_bundle)
    ).raise_for_status()
    api.patch(f"/referrals/{referral['id']}", json=[edit("/details/notes", "x")])
    assert partner_center.state()["deliveries"][-1]["status"] == "dropped"
    assert len(receiver.received) == dropped_before


def test_delivery_parks_after_ten_attempts(
    api: httpx.Client, registration_api: httpx.Client, partner_center: PartnerCenterSimulator, receiver: _Receiver
) -> None:
    registration_api.post("/registration", json={"WebhookUrl": receiver.url, "WebhookEvents": ["referral-created"]})
    receiver.statuses = [500] * 20
    api.post("/referrals", json=create_request())
    wait_until(lambda: partner_center.state()["deliveries"][0]["status"] == "parked", timeout=20, what="parked")
    assert len(partner_center.state()["deliveries"][0]["attempts"]) == 10
    assert len(receiver.received) == 10


def test_incoming_referral_and_as_microsoft(
    pc_server: RunningServer,
    api: httpx.Client,
    registration_api: httpx.Client,
    partner_center: PartnerCenterSimulator,
    receiver: _Receiver,
    ca_bundle: str,
) -> None:
    events = ["referral-created", "referral-updated", "related-referral-created", "related-referral-updated"]
    registration_api.post("/registration", json={"WebhookUrl": receiver.url, "WebhookEvents": events})
    verify = tls_context(ca_bundle)
    incoming = httpx.post(
        f"{pc_server.url}/_sandbox/incoming-referral",
        json=shared_by_microsoft({"name": "Fabrikam ERP", "customerProfile": {"name": "Fabrikam"}}),
        verify=verify,
    ).json()
    assert incoming["direction"] == "Incoming" and incoming["substatus"] == "Pending"
    assert incoming["inviteContext"]["invitedBy"]["organizationId"] == "msft"
    result = httpx.post(
        f"{pc_server.url}/_sandbox/referrals/{incoming['id']}/as-microsoft",
        json=[member_edit("/trackingInfo/microsoftMsxId", "7-ABC")],
        verify=verify,
    ).json()
    assert result["partner"]["trackingInfo"]["microsoftMsxId"] == "7-ABC"
    assert result["microsoft"]["engagementId"] == incoming["engagementId"]
    # The link as real payloads carry it (id unquoted), and the quoted form of older docs: both work.
    link = incoming["links"]["relatedReferrals"]["uri"]
    assert link.endswith(f"?$filter=engagementId eq {incoming['engagementId']}")
    assert api.get(link).json()["@odata.count"] == 2
    quoted = api.get("/referrals", params={"$filter": f"engagementId eq '{incoming['engagementId']}'"}).json()
    assert quoted["@odata.count"] == 2
    wait_until(lambda: len(receiver.received) >= 3, timeout=10, what="three events")
    names = sorted(json.loads(request.body)["EventName"] for request in receiver.received)
    assert names == ["referral-created", "referral-updated", "related-referral-created"]


def test_validation_event_round_trip(
    registration_api: httpx.Client, partner_center: PartnerCenterSimulator, receiver: _Receiver
) -> None:
    registration_api.post("/registration", json={"WebhookUrl": receiver.url, "WebhookEvents": ["test-created"]})
    correlation_id = registration_api.post("/registration/validationEvents").json()["correlationId"]
    result = wait_until(
        lambda: (
            (body := registration_api.get(f"/registration/validationEvents/{correlation_id}").json())["results"]
            and body
        ),
        timeout=10,
        what="validation result",
    )
    # As Microsoft's sample: the status by name and systemError a boolean.
    assert result["results"][0]["responseCode"] == "OK" and result["results"][0]["systemError"] is False
    assert result["status"] == "completed"
    assert json.loads(receiver.received[0].body)["EventName"] == "test-created"


def test_a_patch_on_an_unlisted_path_is_refused_whole(
    api: httpx.Client, partner_center: PartnerCenterSimulator
) -> None:
    referral = api.post("/referrals", json=create_request()).json()
    path = f"/referrals/{referral['id']}"
    # Deliberately outside the contract: the name is not patchable after creation.
    refused = api.patch(
        path,
        json=[edit("/status", "Closed"), edit("/substatus", "Won"), {"op": "replace", "path": "/name", "value": "x"}],
    )
    status, code, message = contract().refused_path_error("/name")
    assert refused.status_code == status
    assert refused.json()["error"] == {"code": code, "message": message, "target": "/name"}
    assert partner_center.referrals[referral["id"]]["status"] == "Active"  # the status change went nowhere
    for unlisted in (
        "/customerProfile/name",
        "/customerProfile/address",
        "/inviteContext/assistanceRequestCode",
        "/details",
    ):
        assert api.patch(path, json=[{"op": "replace", "path": unlisted, "value": "x"}]).status_code == 400
    # Learn's sample sends dealValue as text; the definition says number: both are taken, stored as a number.
    as_text = api.patch(path, json=[edit("/details/dealValue", "10000")], headers={"Prefer": "return=representation"})
    assert as_text.status_code == 200 and as_text.json()["details"]["dealValue"] == 10000


def test_answers_carry_every_member_the_definition_lists(api: httpx.Client) -> None:
    referral = api.post("/referrals", json=create_request()).json()

    def missing(template: Any, answer: Any, where: str = "") -> list[str]:
        if not isinstance(template, dict):
            return []
        gaps = [f"{where}/{key}" for key in template if not isinstance(answer, dict) or key not in answer]
        for key, inner in template.items():
            if isinstance(answer, dict) and key in answer:
                gaps += missing(inner, answer[key], f"{where}/{key}")
        return gaps

    assert missing(contract().referral_members(), referral) == []
    assert referral["campaignId"] is None and referral["trackingInfo"]["microsoftMsxId"] is None
    listed = api.get("/referrals").json()["value"][0]
    assert missing(contract().referral_members(), listed) == []


def test_list_options_top_skip_count_select_expand(
    api: httpx.Client, partner_center: PartnerCenterSimulator, ca_bundle: str
) -> None:
    httpx.post(
        f"{partner_center.base_url}/_sandbox/referrals",
        json=[{**create_request(), "name": f"deal {n:02}"} for n in range(12)],
        verify=tls_context(ca_bundle),
    ).raise_for_status()
    ordered = {"$orderby": "createdDateTime asc"}
    page = api.get("/referrals", params={**ordered, "$skip": "3", "$top": "4"}).json()
    assert [item["name"] for item in page["value"]] == ["deal 03", "deal 04", "deal 05", "deal 06"]
    assert page["@odata.count"] == 12  # OData: the count ignores $top and $skip
    assert "@odata.count" not in api.get("/referrals", params={"$count": "false"}).json()
    assert api.get("/referrals", params={"$count": "maybe"}).status_code == 400
    selected = api.get("/referrals", params={"$select": "id,name", "$top": "1"}).json()["value"][0]
    assert set(selected) == {"id", "name"}
    assert api.get("/referrals", params={"$select": "nope"}).status_code == 400
    expand = api.get("/referrals", params={"$expand": "team"})
    assert expand.status_code == 400 and expand.json()["error"]["target"] == "$expand"
    assert api.get("/referrals", params={"$skip": "-1"}).status_code == 400
    assert api.get("/referrals", params={"$search": "x"}).status_code == 400


def test_user_calls_without_mfa_get_error_900421(
    api: httpx.Client, identity_server: RunningServer, identity: Any, ca_bundle: str
) -> None:
    from tests.partner_center.conftest import delegated_token

    verify = tls_context(ca_bundle)
    httpx.post(
        f"{identity_server.url}/_sandbox/settings", json={"sign_in_mfa": False}, verify=verify
    ).raise_for_status()
    without_mfa = delegated_token(identity_server.url, "https://api.partner.microsoft.com/.default", ca_bundle)
    refused = api.get("/referrals", headers={"Authorization": f"Bearer {without_mfa}"})
    assert refused.status_code == 401
    assert refused.json()["error"]["innerError"]["code"] == contract().mfa_error_code
    assert api.get("/referrals").status_code == 200  # the fixture's sign-in completed MFA


def test_the_signing_certificate_comes_through_an_intermediate(
    api: httpx.Client, partner_center: PartnerCenterSimulator, ca_bundle: str
) -> None:
    verify = tls_context(ca_bundle)
    leaf = x509.load_der_x509_certificate(httpx.get(partner_center.certificate_url, verify=verify).content)
    access = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    issuer_url = next(item.access_location.value for item in access)
    intermediate = x509.load_der_x509_certificate(httpx.get(issuer_url, verify=verify).content)
    root = x509.load_pem_x509_certificate(Path(ca_bundle).read_bytes())
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    assert intermediate.subject != root.subject
    assert intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.issuer.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Microsoft Corporation"
