"""The Referrals API client against the Partner Center simulator over real HTTPS."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import httpx
import pydantic
import pytest

from sandbox.partner_center import PartnerCenterSimulator
from sandbox.server import RunningServer
from shared.http import tls_context
from shared.model.referral import PatchOperation, Referral
from shared.partner_center.client import (
    ApiTransport,
    PartnerCenterClient,
    PartnerCenterConflictError,
    PartnerCenterMfaRequiredError,
    PartnerCenterUnavailableError,
    PartnerCenterValidationError,
)
from shared.partner_center.contract import contract
from tests.partner_center.conftest import delegated_token
from tests.partner_center.wire import create_request, edit

PC_SCOPE = "https://api.partner.microsoft.com/.default"


class Sleeps(list[float]):
    """Records the back-off the client asked for instead of waiting it out."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(
    pc_server: RunningServer, partner_center: PartnerCenterSimulator, pc_token: str, ca_bundle: str, sleeps: Sleeps
) -> Iterator[PartnerCenterClient]:
    scopes: list[str] = []

    def token_for(scope: str) -> str:
        scopes.append(scope)
        return pc_token

    transport = ApiTransport(
        base_url=f"{pc_server.url}/v1.0/engagements",
        scope=PC_SCOPE,
        token_provider=token_for,
        timeout_seconds=10,
        verify=tls_context(ca_bundle),
        sleep=sleeps,
    )
    pc = PartnerCenterClient(transport)
    yield pc
    pc.close()
    assert set(scopes) <= {PC_SCOPE}


def control(server: RunningServer, ca_bundle: str, path: str, body: object) -> httpx.Response:
    response = httpx.post(f"{server.url}/_sandbox/{path}", json=body, verify=tls_context(ca_bundle))
    response.raise_for_status()
    return response


def requests_to(server: RunningServer, ca_bundle: str, route: str) -> int:
    counts = httpx.get(f"{server.url}/_sandbox/requests", verify=tls_context(ca_bundle)).json()["counts"]
    return int(counts.get(route, 0))


def test_paging_across_250_referrals(client: PartnerCenterClient, pc_server: RunningServer, ca_bundle: str) -> None:
    control(pc_server, ca_bundle, "referrals", [{**create_request(), "name": f"deal {n}"} for n in range(250)])
    pages = list(client.list_pages(orderby="createdDateTime asc"))
    assert [len(page.value) for page in pages] == [100, 100, 50]
    names = [referral.name for page in pages for referral in page.value]
    assert len(set(names)) == 250
    assert requests_to(pc_server, ca_bundle, "GET /v1.0/engagements/referrals") == 3


def test_filter_by_updated_date_time(client: PartnerCenterClient, pc_server: RunningServer, ca_bundle: str) -> None:
    seeded = control(pc_server, ca_bundle, "referrals", [create_request() for _ in range(5)]).json()["value"]
    since = dt.datetime.now(dt.UTC)
    changed = [seeded[1]["id"], seeded[3]["id"]]
    for referral_id in changed:
        client.update_referral(referral_id, [edit("/details/notes", "edited")])
    recent = list(client.referrals_updated_since(since))
    assert [referral.id for referral in recent] == changed
    assert all(referral.updated_date_time and referral.updated_date_time >= since for referral in recent)


def test_related_referrals_follow_the_link_as_given(
    client: PartnerCenterClient, pc_server: RunningServer, ca_bundle: str
) -> None:
    engagement = "3f2b8c1d-5e6a-4b7c-9d8e-0a1b2c3d4e5f"
    seeded = control(
        pc_server, ca_bundle, "referrals", [{**create_request(), "engagementId": engagement}] * 2 + [create_request()]
    ).json()["value"]
    ours = Referral.model_validate(seeded[0])
    assert ours.links and ours.links.related_referrals and ours.links.related_referrals.uri
    assert f"engagementId eq {engagement}" in ours.links.related_referrals.uri  # unquoted, as real payloads
    related = client.related_referrals(ours)
    assert sorted(item.id or "" for item in related) == sorted(item["id"] for item in seeded[:2])
    # Without a link: the same unquoted filter, built from the contract.
    bare = Referral.model_validate({"id": ours.id, "engagementId": engagement})
    assert len(client.related_referrals(bare)) == 2
    with pytest.raises(ValueError):
        client.related_referrals(Referral.model_validate({"id": "x", "engagementId": "x' or status eq 'Active"}))
    # A link to another host is not followed with our token.
    elsewhere = Referral.model_validate(
        {**seeded[0], "links": {"relatedReferrals": {"uri": "https://elsewhere.example/referrals", "method": "GET"}}}
    )
    assert len(client.related_referrals(elsewhere)) == 2


def test_json_patch_update_and_stale_etag(client: PartnerCenterClient, partner_center: PartnerCenterSimulator) -> None:
    created = client.create_referral(Referral.model_validate(create_request()))
    assert created.id and created.e_tag
    updated = client.update_referral(
        created.id,
        [
            PatchOperation.model_validate(edit("/details/dealValue", 95000)),
            edit("/status", "Closed"),
            edit("/substatus", "Won"),
        ],
        etag=created.e_tag,
    )
    assert (
        updated is not None and updated.status == "Closed" and updated.details and updated.details.deal_value == 95000
    )
    stored = partner_center.referrals[created.id]
    assert stored["details"]["dealValue"] == 95000 and stored["eTag"] == updated.e_tag

    with pytest.raises(PartnerCenterConflictError) as conflict:
        client.update_referral(created.id, [edit("/details/notes", "x")], etag=created.e_tag)
    assert conflict.value.status == 412 and conflict.value.code == "preconditionFailed"

    with pytest.raises(PartnerCenterValidationError) as closed:
        client.update_referral(created.id, [edit("/details/notes", "x")])
    assert closed.value.code == "invalidRequest"

    with pytest.raises(pydantic.ValidationError):  # PC accepts only add/replace: refused before sending
        client.update_referral(
            created.id, [{"op": "remove", "path": "/details/notes", "value": None}]
        )  # deliberately invalid

    other = client.create_referral(create_request())
    assert other.id
    member = {"email": "new.seller@partner.example", "firstName": "New", "lastName": "Seller"}
    no_content = client.update_referral(other.id, [edit("/team/-", member, op="add")], return_representation=False)
    assert no_content is None
    assert partner_center.referrals[other.id]["team"][-1] == member


def test_create_validation_error_keeps_code_and_target(client: PartnerCenterClient) -> None:
    request = create_request()
    request["customerProfile"]["address"]["country"] = "Germany"  # deliberately invalid
    with pytest.raises(PartnerCenterValidationError) as refused:
        client.create_referral(request)
    assert refused.value.code == "invalidRequest"
    assert refused.value.target == "customerProfile.address.country"


def test_429_retry_after_is_honoured(
    client: PartnerCenterClient, pc_server: RunningServer, ca_bundle: str, sleeps: Sleeps
) -> None:
    control(
        pc_server,
        ca_bundle,
        "faults",
        {"path_prefix": "/v1.0/engagements/referrals", "status": 429, "retry_after": 7, "count": 2},
    )
    assert list(client.list_referrals()) == []
    assert sleeps == [7.0, 7.0]


def test_500_becomes_a_typed_error_after_retries(
    client: PartnerCenterClient, pc_server: RunningServer, ca_bundle: str, sleeps: Sleeps
) -> None:
    control(pc_server, ca_bundle, "faults", {"path_prefix": "/v1.0/engagements/referrals", "status": 500, "count": 50})
    with pytest.raises(PartnerCenterUnavailableError) as failed:
        client.get_referral("8c0f4d7e-2b9a-4c61-9e3f-5a1d2c7b8e90")
    assert failed.value.status == 500 and failed.value.transient
    assert requests_to(pc_server, ca_bundle, "GET /v1.0/engagements/referrals/{referral_id}") == 5
    assert len(sleeps) == 4 and all(0 < delay <= 60 for delay in sleeps)


def test_create_is_not_retried_after_a_500(
    client: PartnerCenterClient, pc_server: RunningServer, ca_bundle: str, sleeps: Sleeps
) -> None:
    control(
        pc_server,
        ca_bundle,
        "faults",
        {"method": "POST", "path_prefix": "/v1.0/engagements/referrals", "status": 500, "count": 1},
    )
    with pytest.raises(PartnerCenterUnavailableError):
        client.create_referral(create_request())
    assert sleeps == []


def test_nested_inner_error_codes_and_the_mfa_error(
    client: PartnerCenterClient,
    pc_server: RunningServer,
    identity_server: RunningServer,
    identity: object,
    ca_bundle: str,
) -> None:
    httpx.post(
        f"{identity_server.url}/_sandbox/settings", json={"sign_in_mfa": False}, verify=tls_context(ca_bundle)
    ).raise_for_status()
    without_mfa = delegated_token(identity_server.url, PC_SCOPE, ca_bundle)
    transport = ApiTransport(
        base_url=f"{pc_server.url}/v1.0/engagements",
        scope=PC_SCOPE,
        token_provider=lambda scope: without_mfa,
        verify=tls_context(ca_bundle),
    )
    with pytest.raises(PartnerCenterMfaRequiredError) as refused:
        list(PartnerCenterClient(transport).list_referrals())
    transport.close()
    assert refused.value.status == 401
    assert refused.value.codes == ("unauthenticated", contract().mfa_error_code)
    assert "MFA" in str(refused.value) and "partner-center login" in str(refused.value)
