"""Where alerts go: Microsoft Teams and Slack incoming webhooks, and email over SMTP.

Each channel is optional (configured by its settings) and independent: one failing never stops
the others, and a failure comes back as a plain sentence, never as an exception.

Teams: the Workflows "post to a channel when a webhook request is received" trigger takes a
message with an Adaptive Card attachment (the retired Office 365 connectors took MessageCards;
the Workflows format is the one that keeps working). Slack: `text` plus mrkdwn `blocks`.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Any

import httpx

from shared.admin.alerts import Alert
from shared.http import tls_context
from shared.settings import Settings

log = logging.getLogger(__name__)
PRODUCT = "Co-sell Sync"
TIMEOUT_SECONDS = 15.0


def plain_text(subject: str, alerts: Sequence[Alert], page_url: str | None) -> str:
    lines = [f"[{PRODUCT}] {subject}", ""]
    for alert in alerts:
        lines += [alert.title, f"  Why: {alert.why}", f"  What to do: {alert.action}", ""]
    lines.append(f"Status page: {page_url}" if page_url else "Status page: /api/status on the Function app")
    return "\n".join(lines)


def teams_payload(subject: str, alerts: Sequence[Alert], page_url: str | None) -> dict[str, Any]:
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": f"{PRODUCT}: {subject}", "weight": "Bolder", "size": "Medium", "wrap": True}
    ]
    for alert in alerts:
        body += [
            {"type": "TextBlock", "text": alert.title, "weight": "Bolder", "wrap": True, "spacing": "Medium"},
            {
                "type": "FactSet",
                "facts": [{"title": "Why", "value": alert.why}, {"title": "What to do", "value": alert.action}],
            },
        ]
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    if page_url:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open the status page", "url": page_url}]
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


def slack_payload(subject: str, alerts: Sequence[Alert], page_url: str | None) -> dict[str, Any]:
    def escape(text: str) -> str:  # Slack's three control characters in mrkdwn
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{PRODUCT}: {subject}"[:150]}}
    ]
    for alert in alerts[:45]:  # Slack allows 50 blocks per message
        text = f"*{escape(alert.title)}*\n*Why:* {escape(alert.why)}\n*What to do:* {escape(alert.action)}"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}})
    if page_url:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"<{page_url}|Open the status page>"}})
    return {"text": plain_text(subject, alerts, page_url)[:3000], "blocks": blocks}


class AlertChannels:
    """Every configured channel; call it with (subject, alerts, page URL) -> failures in words."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._webhooks: list[tuple[str, str, Any]] = []
        if settings.alert_teams_webhook_url:
            self._webhooks.append(("Teams", settings.alert_teams_webhook_url.get_secret_value(), teams_payload))
        if settings.alert_slack_webhook_url:
            self._webhooks.append(("Slack", settings.alert_slack_webhook_url.get_secret_value(), slack_payload))
        self._email = bool(settings.alert_smtp_host)

    @property
    def channel_count(self) -> int:
        return len(self._webhooks) + (1 if self._email else 0)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self._webhooks] + (["email"] if self._email else [])

    def __call__(self, subject: str, alerts: Sequence[Alert], page_url: str | None) -> list[str]:
        failures: list[str] = []
        for name, url, build in self._webhooks:
            try:
                response = httpx.post(
                    url,
                    json=build(subject, alerts, page_url),
                    timeout=TIMEOUT_SECONDS,
                    verify=tls_context(self._settings.tls_ca_bundle),
                )
                if response.status_code >= 300:
                    raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            except Exception as error:
                # The webhook URL is a secret: name the channel, never the URL.
                failures.append(f"{name} alert not sent: {type(error).__name__}: {_without(str(error), url)}")
        if self._email:
            try:
                self._send_email(subject, alerts, page_url)
            except Exception as error:
                failures.append(f"email alert not sent: {type(error).__name__}: {error}")
        for failure in failures:
            log.error("%s", failure)
        return failures

    def _send_email(self, subject: str, alerts: Sequence[Alert], page_url: str | None) -> None:
        settings = self._settings
        message = EmailMessage()
        message["Subject"] = f"[{PRODUCT}] {subject}"
        message["From"] = settings.alert_email_from or ""
        message["To"] = ", ".join(settings.alert_recipients)
        message.set_content(plain_text(subject, alerts, page_url))
        host = settings.alert_smtp_host or ""
        context = tls_context(settings.tls_ca_bundle)
        server: smtplib.SMTP
        if settings.alert_smtp_security == "ssl":
            server = smtplib.SMTP_SSL(host, settings.alert_smtp_port, timeout=TIMEOUT_SECONDS, context=context)
        else:
            server = smtplib.SMTP(host, settings.alert_smtp_port, timeout=TIMEOUT_SECONDS)
        with server:
            if settings.alert_smtp_security == "starttls":
                server.starttls(context=context)
            if settings.alert_smtp_username and settings.alert_smtp_password:
                server.login(settings.alert_smtp_username, settings.alert_smtp_password.get_secret_value())
            server.send_message(message)


def _without(text: str, secret: str) -> str:
    return text.replace(secret, "<webhook URL>")
