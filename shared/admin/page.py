"""The status page: `GET /api/status` renders it, `POST /api/status` runs an action (Replay).

HTML is rendered on the server from `templates/status.html` with Jinja2 autoescaping, so every
value (a search term, an error text from a CRM, a referral name) is escaped wherever it lands.
The page carries one small script (keep the function key on in-page links in the sandbox, reload
itself) under a per-response CSP nonce; it works without it, minus the self-refresh.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from shared import __version__
from shared.admin import access, status
from shared.admin.alerts import evaluate
from shared.admin.status import StatusSnapshot
from shared.settings import Settings, SettingsError
from shared.sync.failures import DeadLetterNotFound, ReplayError
from shared.sync.state import DeadLetter

TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_FORM_BYTES = 4096
# Query parameters a redirect keeps: the sandbox key and the search.
_KEPT_PARAMS = ("code", "q")


@dataclass(frozen=True)
class PageRequest:
    method: str
    url: str
    params: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass
class PageResponse:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


@functools.cache
def _environment() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["utc"] = lambda moment: f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else "never"
    environment.globals["age"] = status.age
    return environment


def _security_headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
        # The sandbox URL carries the function key: never send it to Partner Center or the CRM.
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }


def _render(template: str, status: int, **context: Any) -> PageResponse:
    nonce = secrets.token_urlsafe(16)
    body = _environment().get_template(template).render(nonce=nonce, version=__version__, **context)
    return PageResponse(status, body, _security_headers(nonce))


def _message_page(status: int, title: str, reason: str) -> PageResponse:
    return _render("message.html", status, title=title, reason=reason)


def _redirect(request: PageRequest, **extra: str) -> PageResponse:
    path = urlsplit(request.url).path
    query = {name: request.params[name] for name in _KEPT_PARAMS if request.params.get(name)}
    query.update(extra)
    return PageResponse(303, "", {"Location": f"{path}?{urlencode(query)}", "Cache-Control": "no-store"})


def _form(request: PageRequest) -> dict[str, str]:
    if len(request.body) > MAX_FORM_BYTES:
        raise access.AccessDenied(413, "the form is too large")
    text = request.body.decode("utf-8", errors="replace")
    return dict(parse_qsl(text, keep_blank_values=True))


Notice = tuple[str, str]
"""('ok' | 'error', sentence) shown at the top of the page."""


def _replay(form: Mapping[str, str], replay: Callable[[str], DeadLetter]) -> tuple[Notice, int] | str:
    """Run the Replay the form asks for: the replayed letter's id, or (what went wrong, HTTP status)."""
    action = form.get("action", "")
    letter_id = form.get("letter", "").strip()
    if action != "replay":
        return ("error", f"unknown action {action!r}: the page offers only Replay"), 400
    if not letter_id:
        return ("error", "Replay needs the id of a dead letter"), 400
    try:
        replay(letter_id)
    except DeadLetterNotFound as error:
        return ("error", str(error)), 404
    except ReplayError as error:  # replayed already, or by someone else just now
        return ("error", str(error)), 409
    return letter_id


def _replayed_notice(request: PageRequest, find_letter: Callable[[str], DeadLetter | None]) -> Notice | None:
    """After a Replay's redirect. Confirms only what really happened: a crafted link cannot make the
    page claim a replay."""
    letter = find_letter(request.params["replayed"]) if request.params.get("replayed") else None
    if letter is None or letter.replayed_at is None:
        return None
    return ("ok", f"Dead letter {letter.id} is back on the sync queue.")


def handle(
    request: PageRequest,
    *,
    load_settings: Callable[[], Settings],
    snapshot: Callable[[Settings, str | None], StatusSnapshot],
    replay: Callable[[str], DeadLetter],
    find_letter: Callable[[str], DeadLetter | None],
) -> PageResponse:
    try:
        settings = load_settings()
    except SettingsError:
        # Nothing else is safe to show before we know who is asking.
        return _message_page(503, "Settings are not valid", "Run `python -m shared doctor` to see which setting.")
    try:
        viewer = access.authorize(settings, request.headers, request.params)
    except access.AccessDenied as denied:
        return _message_page(denied.status, "Not allowed" if denied.status == 403 else "Sign-in needed", denied.reason)

    token, new_cookie = access.csrf_token(request.headers)
    notice, status = _replayed_notice(request, find_letter), 200
    if request.method == "POST":
        try:
            form = _form(request)
            access.check_csrf(request.headers, form)
        except access.AccessDenied as denied:
            return _message_page(denied.status, "Action refused", denied.reason)
        outcome = _replay(form, replay)
        if isinstance(outcome, str):
            return _redirect(request, replayed=outcome)
        notice, status = outcome

    query = (request.params.get("q") or "").strip() or None
    current = snapshot(settings, query)
    response = _render(
        "status.html",
        status,
        snapshot=current,
        alerts=evaluate(current, settings),
        settings=settings,
        viewer=viewer,
        notice=notice,
        query=query or "",
        csrf_field=access.CSRF_FIELD,
        csrf_token=token,
        refresh_seconds=settings.status_page_refresh_seconds,
        now=current.generated_at,
    )
    if new_cookie:
        path = urlsplit(request.url).path or "/"
        response.headers["Set-Cookie"] = access.csrf_cookie(
            token, secure=request.url.lower().startswith("https://"), path=path
        )
    return response
