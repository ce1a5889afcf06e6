"""`python -m shared partner-center login | register-webhook | status`.

Plain-language output, exit code 0 when everything worked and 1 otherwise. Handlers take
`(arguments, out)` like the core commands of `shared.admin.cli`.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from shared.settings import Settings, load_settings

DEFAULT_TEST_WAIT_SECONDS = 60.0


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("partner-center", help="Partner Center sign-in and webhook registration")
    actions = group.add_subparsers(dest="partner_center_command", required=True, metavar="ACTION")

    actions.add_parser(
        "login", help="sign in as the Referrals Admin (device code) and store the encrypted sign-in"
    ).set_defaults(handler=login)

    registering = actions.add_parser(
        "register-webhook",
        help="register URL for the referral events (+ test-created); replaces another tool's registration",
    )
    registering.add_argument("--url", required=True, help="the events endpoint, with ?code=<function key>")
    registering.add_argument("--send-test", action="store_true", help="send a validation event and report its delivery")
    registering.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_TEST_WAIT_SECONDS,
        metavar="SECONDS",
        help=f"how long to wait for the test delivery (default {DEFAULT_TEST_WAIT_SECONDS:.0f})",
    )
    registering.set_defaults(handler=register_webhook)

    actions.add_parser(
        "status", help="signed-in account, refresh-token health, current webhook registration"
    ).set_defaults(handler=status)


def _say(out: TextIO, text: str) -> None:
    print(text, file=out, flush=True)  # flushed: the device code must show before we block


def _auth(settings: Settings) -> Any:
    from shared.partner_center.auth import PartnerCenterAuth

    return PartnerCenterAuth.from_settings(settings)


def login(arguments: argparse.Namespace, out: TextIO) -> int:
    from shared.partner_center.registration import REGISTRATION_FAILURES

    settings = load_settings()
    _say(out, "Sign in to Partner Center as a user with the Referrals Admin role:")
    try:
        account = _auth(settings).login(lambda message: _say(out, f"  {message}"))
    except REGISTRATION_FAILURES as error:
        _say(out, f"✖ sign-in failed: {error}")
        return 1
    _say(out, f"✔ signed in as {account}; the sign-in is stored encrypted (table 'tokencache')")
    return 0


def register_webhook(arguments: argparse.Namespace, out: TextIO) -> int:
    from shared.partner_center.registration import REGISTRATION_FAILURES, WebhookRegistrar, redact_url

    settings = load_settings()
    auth = _auth(settings)
    registrar = WebhookRegistrar.from_settings(settings, auth.token, on_mfa_required=auth.record_mfa_refusal)
    try:
        result = registrar.ensure(arguments.url, send_test=arguments.send_test, test_timeout_seconds=arguments.wait)
    except ValueError as error:
        _say(out, f"✖ --url: {error}")
        return 1
    except REGISTRATION_FAILURES as error:
        _say(out, f"✖ webhook registration failed: {error}")
        return 1
    finally:
        registrar.close()
    before = result.before
    _say(
        out,
        f"before: {redact_url(before.url)} for {', '.join(before.events)}" if before else "before: nothing registered",
    )
    if result.overwritten_url:
        _say(
            out,
            f"⚠ WARNING: this replaced {redact_url(result.overwritten_url)}, which no longer receives Partner Center "
            "events (one webhook URL per tenant). If another tool (e.g. Microsoft's co-sell connector) used it, "
            "it stops getting referral events now.",
        )
    verb = {
        "unchanged": "already registered, nothing changed",
        "created": "registered",
        "updated": "registered (replaced)",
    }
    _say(out, f"after:  {redact_url(result.after.url)} for {', '.join(result.after.events)}")
    _say(out, f"✔ {verb[result.action]}")
    if result.test is not None:
        mark = "✔" if result.test.delivered else "✖"
        _say(out, f"{mark} {result.test.describe()}")
    return 0 if result.ok else 1


def status(arguments: argparse.Namespace, out: TextIO) -> int:
    from shared.partner_center.registration import REGISTRATION_FAILURES, WebhookRegistrar, redact_url

    settings = load_settings()
    auth = _auth(settings)
    summary = auth.health_summary()
    if summary.get("error"):
        _say(out, f"✖ the stored sign-in cannot be read: {summary['error']}")
        return 1
    if not summary["signed_in"]:
        _say(out, "✖ not signed in: run `python -m shared partner-center login`")
        return 1
    healthy = bool(summary["healthy"])
    _say(out, f"signed in as {summary['account']} (since {summary['signed_in_at']})")
    _say(out, f"refresh token last used: {summary['refresh_token_last_used_at'] or 'never'}")
    if summary["last_refresh_error"]:
        _say(out, f"✖ last refresh FAILED at {summary['last_refresh_error_at']}: {summary['last_refresh_error']}")
        _say(out, "  sign in again with `python -m shared partner-center login`")
    else:
        _say(out, "✔ refresh token healthy")
    if summary["mfa"] is True:
        _say(out, "✔ the sign-in carries an MFA claim")
    elif summary["mfa"] is False:
        _say(out, f"✖ {summary['mfa_problem']}")
    else:
        _say(out, "? the stored tokens do not say whether the sign-in used MFA (no `amr` claim)")

    registrar = WebhookRegistrar.from_settings(settings, auth.token, on_mfa_required=auth.record_mfa_refusal)
    try:
        registration = registrar.current()
    except REGISTRATION_FAILURES as error:
        _say(out, f"✖ webhook registration cannot be read: {error}")
        return 1
    finally:
        registrar.close()
    if registration is None:
        _say(out, "✖ no webhook registered: run `python -m shared partner-center register-webhook --url ...`")
        return 1
    _say(out, f"webhook: {redact_url(registration.url)}")
    _say(out, f"events:  {', '.join(registration.events)}")
    missing = registration.missing_events()
    if missing:
        _say(out, f"✖ not registered for {', '.join(missing)}: run register-webhook again")
        healthy = False
    return 0 if healthy else 1
