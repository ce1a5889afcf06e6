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
    PartnerCenterUnavailableError,
    PartnerCenterValidationError,
    odata_string,
)
from tests.partner_center.test_partner_center_simulator import create_request

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
        client.update_referral(referral_id, [{"op": "replace", "path": "/details/notes", "value": "edited"}])
    recent = list(client.referrals_updated_since(since))
    assert [referral.id for referral in recent] == changed
    assert all(referral.updated_date_time and referral.updated_date_time >= since for referral in recent)


def test_related_referrals_escape_the_engagement_id(
    client: PartnerCenterClient, pc_server: RunningServer, ca_bundle: str
) -> None:
    control(pc_server, ca_bundle, "referrals", [{**create_request(), "engagementId": "e-1"}, create_request()])
    assert [referral.engagement_id for referral in client.related_referrals("e-1")] == ["e-1"]
    assert client.related_referrals("x' or status eq 'Active") == []
    assert odata_string("O'Brien & Co") == "'O''Brien & Co'"


def test_json_patch_update_and_stale_etag(client: PartnerCenterClient, partner_center: PartnerCenterSimulator) -> None:
    created = client.create_referral(Referral.model_validate(create_request()))
    assert created.id and created.e_tag
    updated = client.update_referral(
        created.id,
        [
            PatchOperation(op="replace", path="/details/dealValue", value=95000),
            {"op": "replace", "path": "/status", "value": "Closed"},
            {"op": "replace", "path": "/substatus", "value": "Won"},
        ],
        etag=created.e_tag,
    )
    assert (
        updated is not None and updated.status == "Closed" and updated.details and updated.details.deal_value == 95000
    )
    stored = partner_center.referrals[created.id]
    assert stored["details"]["dealValue"] == 95000 and stored["eTag"] == updated.e_tag

    with pytest.raises(PartnerCenterConflictError) as conflict:
        client.update_referral(created.id, [{"op": "replace", "path": "/name", "value": "x"}], etag=created.e_tag)
    assert conflict.value.status == 412 and conflict.value.code == "preconditionFailed"

    with pytest.raises(PartnerCenterValidationError) as closed:
        client.update_referral(created.id, [{"op": "replace", "path": "/name", "value": "x"}])
    assert closed.value.code == "invalidRequest"

    with pytest.raises(pydantic.ValidationError):  # PC accepts only add/replace: refused before sending
        client.update_referral(created.id, [{"op": "remove", "path": "/name", "value": None}])

    other = client.create_referral(create_request())
    assert other.id
    no_content = client.update_referral(
        other.id, [{"op": "add", "path": "/tags/-", "value": "t"}], return_representation=False
    )
    assert no_content is None
    assert partner_center.referrals[other.id]["tags"] == ["t"]


def test_create_validation_error_keeps_code_and_target(client: PartnerCenterClient) -> None:
    request = create_request()
    request["customerProfile"]["address"]["country"] = "Germany"
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
