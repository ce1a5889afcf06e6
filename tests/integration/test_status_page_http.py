"""The status page's edges over real HTTP (local host + Azurite): access, CSRF, bad input, escaping.

Partner Center is pointed at a closed loopback port and no sign-in is stored, so those parts of the
page show their error while the rest still works (and nothing leaves the machine).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

import function_app
from sandbox import credentials
from sandbox.host import LocalHost, functions_of
from shared import bootstrap
from shared.partner_center.token_store import TokenCacheStore
from shared.sync.queues import SYNC_QUEUE, QueueProducer
from shared.sync.state import Link, StateStore, link_id_for_referral
from shared.sync.storage import StorageAccount

pytestmark = [pytest.mark.azurite, pytest.mark.e2e]

CLOSED_PORT = "https://127.0.0.1:9"  # nothing listens: Partner Center calls fail at once, locally


@pytest.fixture
def environment(
    app_environment: dict[str, str], storage: StorageAccount, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    for name in ("PC_AUTHORITY_HOST", "PC_API_BASE_URL"):
        monkeypatch.setenv(name, CLOSED_PORT)
    TokenCacheStore(storage, app_environment["PC_TOKEN_CACHE_KEY"]).delete()
    bootstrap.reset()
    return {**app_environment, "PC_AUTHORITY_HOST": CLOSED_PORT, "PC_API_BASE_URL": CLOSED_PORT}


@pytest.fixture
def host(environment: dict[str, str]) -> Iterator[LocalHost]:
    running = LocalHost(
        functions=functions_of([function_app.app], ["status_page"]), environ=environment, http_port=0
    ).start()
    yield running
    running.stop()


@pytest.fixture
def state(storage: StorageAccount) -> StateStore:
    return StateStore(storage)


def url(host: LocalHost, **params: str) -> str:
    return str(httpx.URL(f"{host.url}/api/status", params={"code": credentials.FUNCTION_KEY, **params}))


def open_page(client: httpx.Client, host: LocalHost, **params: str) -> str:
    """GET the page (the client keeps the CSRF cookie) and return the form token it rendered."""
    response = client.get(url(host, **params))
    assert response.status_code == 200, response.text
    found = re.search(r'name="csrf" value="([^"]+)"', response.text)
    assert found, "the page renders no form token (is there a dead letter to replay?)"
    return found.group(1)


def new_dead_letter(state: StateStore) -> str:
    payload = json.dumps({"source": "pc", "referral_id": str(uuid.uuid4()), "event": "referral-updated"})
    return state.record_dead_letter(queue=SYNC_QUEUE, payload=payload, dequeue_count=5, reason="boom").id


# ---- access -----------------------------------------------------------------------------------------
def test_unknown_routes_and_methods_are_404(host: LocalHost) -> None:
    assert (
        httpx.get(f"{host.url}/api/status/nothing-here", params={"code": credentials.FUNCTION_KEY}).status_code == 404
    )
    assert httpx.get(f"{host.url}/api/statuses", params={"code": credentials.FUNCTION_KEY}).status_code == 404
    assert httpx.put(url(host)).status_code == 404


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_a_missing_or_wrong_key_is_401_and_a_forged_sign_in_does_not_help(host: LocalHost, key: str | None) -> None:
    principal = base64.b64encode(
        json.dumps({"claims": [{"typ": "roles", "val": "CoSellSync.Admin"}]}).encode()
    ).decode()
    params = {"code": key} if key else {}
    response = httpx.get(f"{host.url}/api/status", params=params, headers={"X-MS-CLIENT-PRINCIPAL": principal})
    assert response.status_code == 401
    assert "function key" in response.text
    assert "Dead letters" not in response.text


def _principal(*roles: str) -> str:
    claims = [{"typ": "name", "val": "Ada Admin"}] + [{"typ": "roles", "val": role} for role in roles]
    body = {"auth_typ": "aad", "claims": claims, "name_typ": "name", "role_typ": "roles"}
    return base64.b64encode(json.dumps(body).encode()).decode()


def test_in_azure_only_a_signed_in_user_with_the_admin_role_gets_in(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SANDBOX_FUNCTION_KEY")
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "true")
    bootstrap.reset()
    running = LocalHost(
        functions=functions_of([function_app.app], ["status_page"]), environ=environment, http_port=0
    ).start()
    try:
        page = f"{running.url}/api/status"
        assert httpx.get(page).status_code == 401  # App Service would have sent the browser to sign in
        assert httpx.get(page, params={"code": credentials.FUNCTION_KEY}).status_code == 401  # no key mode here
        refused = httpx.get(page, headers={"X-MS-CLIENT-PRINCIPAL": _principal("Reader")})
        assert refused.status_code == 403 and "CoSellSync.Admin" in refused.text
        allowed = httpx.get(
            page,
            headers={
                "X-MS-CLIENT-PRINCIPAL": _principal("CoSellSync.Admin"),
                "X-MS-CLIENT-PRINCIPAL-NAME": "ada@contoso.com",
            },
        )
        assert allowed.status_code == 200 and "ada@contoso.com (Entra ID)" in allowed.text

        # Without App Service authentication nothing strips a forged header: it is not trusted.
        monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "false")
        bootstrap.reset()
        forged = httpx.get(page, headers={"X-MS-CLIENT-PRINCIPAL": _principal("CoSellSync.Admin")})
        assert forged.status_code == 401 and "App Service authentication is not enabled" in forged.text
    finally:
        running.stop()


def test_the_page_sets_a_strict_csrf_cookie_and_a_tight_policy(host: LocalHost, environment: dict[str, str]) -> None:
    response = httpx.get(url(host))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/api/status" in cookie
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "form-action 'self'" in policy
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    # Nothing secret is rendered: not the key in the URL, not a setting's secret.
    for secret in (credentials.FUNCTION_KEY, environment["PC_CLIENT_SECRET"], environment["SALESFORCE_CLIENT_SECRET"]):
        assert secret not in response.text
    assert "AccountKey" not in response.text
    # Parts that cannot be read say why; the page still renders.
    assert "could not read inbound referrals from Partner Center" in response.text
    assert "no Partner Center sign-in is stored" in response.text


# ---- Replay -----------------------------------------------------------------------------------------
def test_replay_needs_the_form_token_and_refuses_other_sites(
    host: LocalHost, state: StateStore, storage: StorageAccount, empty_sync_queues: None
) -> None:
    letter_id = new_dead_letter(state)
    queue = QueueProducer(storage)
    with httpx.Client() as client:
        token = open_page(client, host)
        form = {"action": "replay", "letter": letter_id}
        no_token = client.post(url(host), data=form)
        assert no_token.status_code == 403 and "security token" in no_token.text
        stale = client.post(url(host), data={**form, "csrf": "x" * 43})
        assert stale.status_code == 403
        cross_site = client.post(url(host), data={**form, "csrf": token}, headers={"Sec-Fetch-Site": "cross-site"})
        assert cross_site.status_code == 403 and "another site" in cross_site.text
    with httpx.Client() as other_browser:  # a token from one browser is worthless in another
        assert other_browser.post(url(host), data={**form, "csrf": token}).status_code == 403
    letter = state.get_dead_letter(letter_id)
    assert letter is not None and letter.replayed_at is None
    assert queue.depth(SYNC_QUEUE) == 0


def test_replay_of_an_unknown_or_replayed_letter_says_so_and_changes_nothing(
    host: LocalHost, state: StateStore, storage: StorageAccount, empty_sync_queues: None
) -> None:
    letter_id = new_dead_letter(state)
    queue = QueueProducer(storage)
    with httpx.Client() as client:
        token = open_page(client, host)
        unknown = client.post(url(host), data={"csrf": token, "action": "replay", "letter": "00000000000000000-nope"})
        assert unknown.status_code == 404
        assert "there is no dead letter with id &#39;00000000000000000-nope&#39;" in unknown.text
        invalid = client.post(url(host), data={"csrf": token, "action": "replay", "letter": "a/b#c"})
        assert invalid.status_code == 404
        assert client.post(url(host), data={"csrf": token, "action": "delete", "letter": letter_id}).status_code == 400
        assert queue.depth(SYNC_QUEUE) == 0

        done = client.post(url(host), data={"csrf": token, "action": "replay", "letter": letter_id})
        assert done.status_code == 303
        assert f"replayed={letter_id}" in done.headers["location"]
        assert queue.depth(SYNC_QUEUE) == 1
        shown = client.get(done.headers["location"].replace("/api/status", f"{host.url}/api/status", 1))
        assert f"Dead letter {letter_id} is back on the sync queue." in shown.text

        crafted = client.get(url(host, replayed=new_dead_letter(state)))  # never replayed: no false claim
        assert crafted.status_code == 200 and "is back on the sync queue" not in crafted.text

        again = client.post(url(host), data={"csrf": token, "action": "replay", "letter": letter_id})
        assert again.status_code == 409 and "was replayed already" in again.text
        assert queue.depth(SYNC_QUEUE) == 1


# ---- search -----------------------------------------------------------------------------------------
def test_search_input_is_escaped_on_the_page_and_never_reaches_a_query_as_text(
    host: LocalHost, state: StateStore
) -> None:
    referral_id = str(uuid.uuid4())
    hostile_name = f"<img src=x onerror=alert(1)> Contoso {referral_id[:8]}"
    state.create_link(
        Link(
            link_id=link_id_for_referral(referral_id), referral_id=referral_id, snapshot={"pc": {"name": hostile_name}}
        )
    )
    for query in ("<script>alert('q')</script>", "x' or PartitionKey ne '", "a/b\\c#d?e", "%00"):
        response = httpx.get(url(host, q=query))
        assert response.status_code == 200, query
        assert "<script>alert(" not in response.text
        assert "Nothing matches" in response.text
    assert (
        "&lt;script&gt;alert(&#39;q&#39;)&lt;/script&gt;" in httpx.get(url(host, q="<script>alert('q')</script>")).text
    )

    by_name = httpx.get(url(host, q=f"contoso {referral_id[:8]}"))  # names match case-insensitively
    assert f'data-link="pc-{referral_id}"' in by_name.text
    assert "<img src=x" not in by_name.text and "&lt;img src=x onerror=alert(1)&gt;" in by_name.text
    by_id = httpx.get(url(host, q=referral_id))
    assert by_id.text.count(f'class="match" data-link="pc-{referral_id}"') == 1
