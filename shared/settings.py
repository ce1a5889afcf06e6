"""Every setting of the app, in one typed object: the only module that reads the environment.

Names are the app-setting names an admin types in Azure (or in local.settings.json). Values are
validated on first use; a problem raises `SettingsError`, whose message names each offending
setting and says what a valid value looks like. Secrets are `SecretStr` and are masked in every
printout (`describe()`, `python -m shared doctor`, the health endpoint).

The README's configuration reference is generated from the field descriptions here
(`reference_markdown()`), and a test keeps the two identical.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from shared.ncrontab import Schedule, ScheduleError

CrmKind = Literal["salesforce", "dynamics"]
SalesforceAuth = Literal["client_credentials", "jwt", "password"]
SmtpSecurity = Literal["starttls", "ssl", "none"]


# Azurite's well-known development account (public, documented by Microsoft; not a secret).
_DEV_ACCOUNT = "devstoreaccount1"
_DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _setting(
    default: Any,
    description: str,
    *,
    group: str,
    example: str | None = None,
    alias: str,
) -> Any:
    extra: dict[str, Any] = {"group": group}
    if example is not None:
        extra["example"] = example
    return Field(default=default, alias=alias, description=description, json_schema_extra=extra)


class SettingsError(ValueError):
    """Settings are missing or invalid. `problems` holds one plain sentence per setting."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Invalid settings:\n" + "\n".join(f"  - {problem}" for problem in problems))


class Settings(BaseModel):
    """Typed app settings. Build with `load_settings()` (from the environment) or directly in tests."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True, validate_default=True)

    # ---- Core -----------------------------------------------------------------------------------
    crm_kind: CrmKind = _setting(
        None,
        "Which CRM this deployment syncs with: `salesforce` or `dynamics`.",
        group="Core",
        example="salesforce",
        alias="CRM_KIND",
    )
    storage_connection: SecretStr | None = _setting(
        None,
        "Storage for the Functions host and for our state and queues: a connection string, or "
        "`UseDevelopmentStorage=true` for Azurite on its default ports. Leave empty in Azure and set "
        "the two `AzureWebJobsStorage__*ServiceUri` settings for identity-based access instead.",
        group="Storage",
        example="UseDevelopmentStorage=true",
        alias="AzureWebJobsStorage",
    )
    storage_table_uri: str | None = _setting(
        None,
        "Identity-based storage: the Table service URI (used when `AzureWebJobsStorage` is empty).",
        group="Storage",
        example="https://mystorage.table.core.windows.net",
        alias="AzureWebJobsStorage__tableServiceUri",
    )
    storage_queue_uri: str | None = _setting(
        None,
        "Identity-based storage: the Queue service URI (used when `AzureWebJobsStorage` is empty).",
        group="Storage",
        example="https://mystorage.queue.core.windows.net",
        alias="AzureWebJobsStorage__queueServiceUri",
    )
    storage_client_id: str | None = _setting(
        None,
        "Identity-based storage: client id of the user-assigned managed identity (empty = system-assigned).",
        group="Storage",
        example="00000000-0000-0000-0000-000000000000",
        alias="AzureWebJobsStorage__clientId",
    )
    tls_ca_bundle: str | None = _setting(
        None,
        "Path of a PEM file of extra CA certificates trusted for outbound HTTPS (the sandbox sets "
        "`.sandbox/ca.pem`). Empty = the system trust store.",
        group="Core",
        example=".sandbox/ca.pem",
        alias="TLS_CA_BUNDLE",
    )

    # ---- Sync rules (SPEC 1.5) --------------------------------------------------------------------
    show_sync_mark_in_name: bool = _setting(
        True,
        'Append " ✔" to a record name after a successful sync and " ✖" after a failure. Never sent to Partner Center.',
        group="Sync rules",
        example="true",
        alias="SHOW_SYNC_MARK_IN_NAME",
    )
    sync_cosell_only: bool = _setting(
        False,
        "`true`: only co-sell and pipeline referrals go Partner Center -> CRM (lead referrals are skipped).",
        group="Sync rules",
        example="false",
        alias="SYNC_COSELL_ONLY",
    )
    crm_deal_value_field: str | None = _setting(
        None,
        "CRM field holding the deal value. Default `Amount` (Salesforce) / `estimatedvalue` (Dynamics). "
        "A calculated field must not be 0 or empty.",
        group="Sync rules",
        example="Amount",
        alias="CRM_DEAL_VALUE_FIELD",
    )
    crm_deal_currency_field: str | None = _setting(
        None,
        "CRM field holding the deal currency (ISO 4217). Default `CurrencyIsoCode` / `transactioncurrencyid`.",
        group="Sync rules",
        example="CurrencyIsoCode",
        alias="CRM_DEAL_CURRENCY_FIELD",
    )
    crm_account_country_field: str | None = _setting(
        None,
        "CRM account field holding the customer's two-letter ISO 3166 country. Default `BillingCountry` / `address1_country`.",
        group="Sync rules",
        example="BillingCountry",
        alias="CRM_ACCOUNT_COUNTRY_FIELD",
    )
    accept_country_names: bool = _setting(
        False,
        '`true`: an account country typed as a name that clearly means one country ("Germany", "United States") '
        "is sent as its ISO code; `false`: the country field must hold the two-letter ISO 3166 code, like Microsoft's connector.",
        group="Sync rules",
        example="false",
        alias="ACCEPT_COUNTRY_NAMES",
    )
    pc_referral_link_template: str = _setting(
        "https://partner.microsoft.com/dashboard/referrals/v2/opportunities/{id}",
        "Deep link written to the CRM's Referral Link field; `{id}` is the referral id, `{engagement_id}` its engagement. "
        "Partner Center does not document its UI URLs, so adjust it if Microsoft moves them.",
        group="Sync rules",
        example="https://partner.microsoft.com/dashboard/referrals/v2/opportunities/{id}",
        alias="PC_REFERRAL_LINK_TEMPLATE",
    )
    salesforce_pending_stage: str = _setting(
        "Prospecting",
        "Salesforce stage that holds referrals from Microsoft until they are accepted.",
        group="Sync rules",
        example="Prospecting",
        alias="SALESFORCE_PENDING_STAGE",
    )
    salesforce_active_stage: str = _setting(
        "Qualification",
        "Salesforce stage set when a referral is accepted.",
        group="Sync rules",
        example="Qualification",
        alias="SALESFORCE_ACTIVE_STAGE",
    )
    salesforce_won_stage: str = _setting(
        "Closed Won",
        "Salesforce stage written when Partner Center closes a referral as won.",
        group="Sync rules",
        example="Closed Won",
        alias="SALESFORCE_WON_STAGE",
    )
    salesforce_lost_stage: str = _setting(
        "Closed Lost",
        "Salesforce stage written when Partner Center closes a referral as lost, declined or expired.",
        group="Sync rules",
        example="Closed Lost",
        alias="SALESFORCE_LOST_STAGE",
    )

    # ---- Schedules ------------------------------------------------------------------------------
    crm_poll_schedule: str = _setting(
        "0 */1 * * * *",
        "NCRONTAB (six fields, seconds first) of the CRM poll that picks up seller edits.",
        group="Schedules",
        example="0 */1 * * * *",
        alias="CRM_POLL_SCHEDULE",
    )
    pc_reconcile_schedule: str = _setting(
        "0 */15 * * * *",
        "NCRONTAB of the Partner Center reconcile poll that catches webhooks Partner Center gave up on.",
        group="Schedules",
        example="0 */15 * * * *",
        alias="PC_RECONCILE_SCHEDULE",
    )
    pc_token_refresh_schedule: str = _setting(
        "0 0 3 * * *",
        "NCRONTAB of the timer that refreshes the Partner Center sign-in so its refresh token never idles out.",
        group="Schedules",
        example="0 0 3 * * *",
        alias="PC_TOKEN_REFRESH_SCHEDULE",
    )

    # ---- Status page and alerts -----------------------------------------------------------------------
    status_page_admin_role: str = _setting(
        "CoSellSync.Admin",
        "App role (value) a user signed in with Entra ID needs to open the status page (`/api/status`) "
        "and replay dead letters.",
        group="Status page and alerts",
        example="CoSellSync.Admin",
        alias="STATUS_PAGE_ADMIN_ROLE",
    )
    status_page_refresh_seconds: int = _setting(
        30,
        "How often the status page reloads itself, in seconds (5 to 3600).",
        group="Status page and alerts",
        example="30",
        alias="STATUS_PAGE_REFRESH_SECONDS",
    )
    status_page_url: str | None = _setting(
        None,
        "Public URL of the status page, linked from every alert. Empty = alerts name the page without a link.",
        group="Status page and alerts",
        example="https://func-cosell-abc123.azurewebsites.net/api/status",
        alias="STATUS_PAGE_URL",
    )
    sandbox_function_key: SecretStr | None = _setting(
        None,
        "The local host's function key (sandbox only, never set in Azure, which issues its own keys). "
        "When set, the status page opens with this key (`?code=`) alone; when not set (Azure), only an "
        "Entra ID sign-in (App Service authentication) with the admin app role opens it.",
        group="Status page and alerts",
        example="sandbox-function-key",
        alias="SANDBOX_FUNCTION_KEY",
    )
    website_auth_enabled: bool = _setting(
        False,
        "Set by App Service (never by you): `true` when App Service authentication is on. Only then does "
        "the status page trust the signed-in user the platform passes to it.",
        group="Status page and alerts",
        example="false",
        alias="WEBSITE_AUTH_ENABLED",
    )
    alert_schedule: str = _setting(
        "0 */5 * * * *",
        "NCRONTAB of the timer that evaluates alerts and sends them.",
        group="Status page and alerts",
        example="0 */5 * * * *",
        alias="ALERT_SCHEDULE",
    )
    alert_teams_webhook_url: SecretStr | None = _setting(
        None,
        "Microsoft Teams incoming webhook (Workflows) URL for alerts. Empty = no Teams alerts.",
        group="Status page and alerts",
        example="@Microsoft.KeyVault(SecretUri=...)",
        alias="ALERT_TEAMS_WEBHOOK_URL",
    )
    alert_slack_webhook_url: SecretStr | None = _setting(
        None,
        "Slack incoming webhook URL for alerts. Empty = no Slack alerts.",
        group="Status page and alerts",
        example="@Microsoft.KeyVault(SecretUri=...)",
        alias="ALERT_SLACK_WEBHOOK_URL",
    )
    alert_smtp_host: str | None = _setting(
        None,
        "SMTP server for alert email. Empty = no email alerts.",
        group="Status page and alerts",
        example="smtp.office365.com",
        alias="ALERT_SMTP_HOST",
    )
    alert_smtp_port: int = _setting(
        587,
        "SMTP port.",
        group="Status page and alerts",
        example="587",
        alias="ALERT_SMTP_PORT",
    )
    alert_smtp_security: SmtpSecurity = _setting(
        "starttls",
        "`starttls` (port 587), `ssl` (port 465) or `none` (loopback servers only).",
        group="Status page and alerts",
        example="starttls",
        alias="ALERT_SMTP_SECURITY",
    )
    alert_smtp_username: str | None = _setting(
        None,
        "SMTP user name (empty = no SMTP sign-in).",
        group="Status page and alerts",
        example="cosell-alerts@contoso.com",
        alias="ALERT_SMTP_USERNAME",
    )
    alert_smtp_password: SecretStr | None = _setting(
        None,
        "SMTP password (a Key Vault reference in Azure).",
        group="Status page and alerts",
        example="@Microsoft.KeyVault(SecretUri=...)",
        alias="ALERT_SMTP_PASSWORD",
    )
    alert_email_from: str | None = _setting(
        None,
        "Sender address of alert email.",
        group="Status page and alerts",
        example="cosell-alerts@contoso.com",
        alias="ALERT_EMAIL_FROM",
    )
    alert_email_to: str | None = _setting(
        None,
        "Recipients of alert email, comma-separated.",
        group="Status page and alerts",
        example="partner-ops@contoso.com,crm-admins@contoso.com",
        alias="ALERT_EMAIL_TO",
    )
    alert_expiry_days: int = _setting(
        3,
        "Alert when an inbound referral still waits for a response with fewer than this many days before it expires.",
        group="Status page and alerts",
        example="3",
        alias="ALERT_EXPIRY_DAYS",
    )
    alert_no_poll_minutes: int = _setting(
        15,
        "Alert when the CRM poll or the Partner Center reconcile has not succeeded for this many minutes.",
        group="Status page and alerts",
        example="15",
        alias="ALERT_NO_POLL_MINUTES",
    )
    alert_no_webhook_hours: int = _setting(
        24,
        "Alert when no Partner Center push notification arrived for this many hours (0 = never alert).",
        group="Status page and alerts",
        example="24",
        alias="ALERT_NO_WEBHOOK_HOURS",
    )
    alert_digest_hour: int = _setting(
        8,
        "UTC hour (0-23) of the daily digest of problems still open that were already alerted.",
        group="Status page and alerts",
        example="8",
        alias="ALERT_DIGEST_HOUR",
    )

    # ---- Backfill --------------------------------------------------------------------------------
    backfill_syncs_per_minute: int = _setting(
        30,
        "How many syncs `python -m shared backfill --apply` queues per minute. Each sync makes a handful of "
        "API calls to each side; 30 stays well inside Dataverse's 6,000 requests per 5 minutes and a "
        "Salesforce org's daily allowance while the regular syncs go on.",
        group="Backfill",
        example="30",
        alias="BACKFILL_SYNCS_PER_MINUTE",
    )

    # ---- Partner Center ---------------------------------------------------------------------------
    pc_tenant_id: str = _setting(
        None,
        "Entra tenant id (GUID or domain) of the partner organisation.",
        group="Partner Center",
        example="contoso.onmicrosoft.com",
        alias="PC_TENANT_ID",
    )
    pc_client_id: str = _setting(
        None,
        "Application (client) id of the Entra app registration with delegated Partner Center permissions.",
        group="Partner Center",
        example="00000000-0000-0000-0000-000000000000",
        alias="PC_CLIENT_ID",
    )
    pc_client_secret: SecretStr = _setting(
        None,
        "Client secret of that app registration (a Key Vault reference in Azure).",
        group="Partner Center",
        example="@Microsoft.KeyVault(SecretUri=...)",
        alias="PC_CLIENT_SECRET",
    )
    pc_token_cache_key: SecretStr = _setting(
        None,
        "Key that encrypts the stored Partner Center sign-in (token cache) at rest: 32 random bytes, "
        "URL-safe base64 (44 characters), e.g. from `python -m shared new-key`.",
        group="Partner Center",
        example="(44 characters of URL-safe base64)",
        alias="PC_TOKEN_CACHE_KEY",
    )
    pc_authority_host: str = _setting(
        "https://login.microsoftonline.com",
        "Entra authority host used to sign in (the sandbox points it at its identity simulator).",
        group="Partner Center",
        example="https://login.microsoftonline.com",
        alias="PC_AUTHORITY_HOST",
    )
    pc_api_base_url: str = _setting(
        "https://api.partner.microsoft.com/v1.0/engagements",
        "Base URL of the Partner Center Referrals API.",
        group="Partner Center",
        example="https://api.partner.microsoft.com/v1.0/engagements",
        alias="PC_API_BASE_URL",
    )
    pc_api_scope: str = _setting(
        "https://api.partner.microsoft.com/.default",
        "Token scope for the Referrals API.",
        group="Partner Center",
        example="https://api.partner.microsoft.com/.default",
        alias="PC_API_SCOPE",
    )
    pc_webhook_api_base_url: str = _setting(
        "https://api.partnercenter.microsoft.com/webhooks/v1",
        "Base URL of the Partner Center webhook registration API.",
        group="Partner Center",
        example="https://api.partnercenter.microsoft.com/webhooks/v1",
        alias="PC_WEBHOOK_API_BASE_URL",
    )
    pc_webhook_api_scope: str = _setting(
        "https://api.partnercenter.microsoft.com/.default",
        "Token scope for the webhook registration API.",
        group="Partner Center",
        example="https://api.partnercenter.microsoft.com/.default",
        alias="PC_WEBHOOK_API_SCOPE",
    )
    pc_webhook_cert_hosts: str = _setting(
        "3psostorageacct.blob.core.windows.net",
        "Comma-separated https hosts from which webhook signing certificates may be downloaded.",
        group="Partner Center",
        example="3psostorageacct.blob.core.windows.net",
        alias="PC_WEBHOOK_CERT_HOSTS",
    )
    pc_webhook_trusted_roots: str | None = _setting(
        None,
        "PEM file of the root certificates a webhook signing certificate must chain to. Empty = the system trust store.",
        group="Partner Center",
        example="/etc/ssl/certs/ca-certificates.crt",
        alias="PC_WEBHOOK_TRUSTED_ROOTS",
    )
    pc_http_timeout_seconds: float = _setting(
        30.0,
        "Timeout in seconds of every Partner Center API call.",
        group="Partner Center",
        example="30",
        alias="PC_HTTP_TIMEOUT_SECONDS",
    )

    # ---- Salesforce -------------------------------------------------------------------------------
    salesforce_auth: SalesforceAuth = _setting(
        "client_credentials",
        "How we sign in to Salesforce: `client_credentials`, `jwt` (JWT bearer) or `password` (username + password + security token).",
        group="Salesforce",
        example="client_credentials",
        alias="SALESFORCE_AUTH",
    )
    salesforce_login_url: str = _setting(
        "https://login.salesforce.com",
        "Salesforce login URL: your My Domain URL for client credentials, `https://test.salesforce.com` for sandbox orgs.",
        group="Salesforce",
        example="https://acme.my.salesforce.com",
        alias="SALESFORCE_LOGIN_URL",
    )
    salesforce_api_version: str = _setting(
        "62.0",
        "Salesforce REST API version.",
        group="Salesforce",
        example="62.0",
        alias="SALESFORCE_API_VERSION",
    )
    salesforce_client_id: str | None = _setting(
        None,
        "Consumer key of the connected app (client credentials and JWT).",
        group="Salesforce",
        example="3MVG9...",
        alias="SALESFORCE_CLIENT_ID",
    )
    salesforce_client_secret: SecretStr | None = _setting(
        None,
        "Consumer secret of the connected app (client credentials).",
        group="Salesforce",
        example="@Microsoft.KeyVault(SecretUri=...)",
        alias="SALESFORCE_CLIENT_SECRET",
    )
    salesforce_username: str | None = _setting(
        None,
        "Integration user name (JWT and password sign-in).",
        group="Salesforce",
        example="integration@acme.com",
        alias="SALESFORCE_USERNAME",
    )
    salesforce_password: SecretStr | None = _setting(
        None,
        "Integration user password (password sign-in).",
        group="Salesforce",
        example="@Microsoft.KeyVault(SecretUri=...)",
        alias="SALESFORCE_PASSWORD",
    )
    salesforce_security_token: SecretStr | None = _setting(
        None,
        "Integration user security token (password sign-in).",
        group="Salesforce",
        example="@Microsoft.KeyVault(SecretUri=...)",
        alias="SALESFORCE_SECURITY_TOKEN",
    )
    salesforce_private_key: SecretStr | None = _setting(
        None,
        "PEM private key whose certificate is uploaded to the connected app (JWT sign-in).",
        group="Salesforce",
        example="@Microsoft.KeyVault(SecretUri=...)",
        alias="SALESFORCE_PRIVATE_KEY",
    )

    # ---- Dynamics 365 (Dataverse) -------------------------------------------------------------------
    dataverse_url: str | None = _setting(
        None,
        "Dataverse environment URL (no path).",
        group="Dynamics 365",
        example="https://contoso.crm4.dynamics.com",
        alias="DATAVERSE_URL",
    )
    dataverse_tenant_id: str | None = _setting(
        None,
        "Entra tenant of the Dataverse application user's app registration.",
        group="Dynamics 365",
        example="contoso.onmicrosoft.com",
        alias="DATAVERSE_TENANT_ID",
    )
    dataverse_client_id: str | None = _setting(
        None,
        "Application (client) id of the Dataverse application user.",
        group="Dynamics 365",
        example="00000000-0000-0000-0000-000000000000",
        alias="DATAVERSE_CLIENT_ID",
    )
    dataverse_client_secret: SecretStr | None = _setting(
        None,
        "Client secret of that app registration (a Key Vault reference in Azure).",
        group="Dynamics 365",
        example="@Microsoft.KeyVault(SecretUri=...)",
        alias="DATAVERSE_CLIENT_SECRET",
    )
    dataverse_authority_host: str = _setting(
        "https://login.microsoftonline.com",
        "Entra authority host for the Dataverse sign-in.",
        group="Dynamics 365",
        example="https://login.microsoftonline.com",
        alias="DATAVERSE_AUTHORITY_HOST",
    )
    dataverse_change_tracking: bool = _setting(
        False,
        "`true`: poll Dataverse with change tracking (delta links) instead of `modifiedon`; the tables must have change tracking enabled.",
        group="Dynamics 365",
        example="false",
        alias="DATAVERSE_CHANGE_TRACKING",
    )

    # ---- validation -----------------------------------------------------------------------------
    @field_validator("crm_poll_schedule", "pc_reconcile_schedule", "pc_token_refresh_schedule", "alert_schedule")
    @classmethod
    def _is_ncrontab(cls, value: str) -> str:
        try:
            Schedule.parse(value.strip())
        except ScheduleError as error:
            raise ValueError(
                f"is not a valid six-field NCRONTAB expression (seconds first), like '0 */5 * * * *': {error}"
            ) from None
        return value.strip()

    @field_validator(
        "pc_authority_host",
        "pc_api_base_url",
        "pc_webhook_api_base_url",
        "salesforce_login_url",
        "dataverse_url",
        "dataverse_authority_host",
        "storage_table_uri",
        "storage_queue_uri",
    )
    @classmethod
    def _is_https_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Plain http only for loopback (Azurite); everything else carries tokens.
        if not re.match(r"^https://[^\s/]+", value) and not re.match(r"^http://(127\.0\.0\.1|localhost)[:/]", value):
            raise ValueError("is not an https URL, like 'https://host.example.com'")
        return value.rstrip("/")

    @field_validator("pc_referral_link_template")
    @classmethod
    def _is_link_template(cls, value: str) -> str:
        try:
            link = value.strip().format(id="REFERRAL", engagement_id="ENGAGEMENT")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"may only use the placeholders {{id}} and {{engagement_id}} ({error}), like "
                "'https://partner.microsoft.com/dashboard/referrals/v2/opportunities/{id}'"
            ) from None
        if not link.startswith("https://"):
            raise ValueError("must be an https URL with {id} in it")
        return value.strip()

    @field_validator("pc_token_cache_key")
    @classmethod
    def _is_fernet_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(value.get_secret_value().encode())
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ValueError(
                "is not 32 bytes of URL-safe base64 (44 characters); create one with `python -m shared new-key`"
            )
        return value

    @field_validator("tls_ca_bundle", "pc_webhook_trusted_roots")
    @classmethod
    def _file_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"names no readable file: {value!r}")
        return value

    @field_validator("status_page_refresh_seconds")
    @classmethod
    def _refresh_range(cls, value: int) -> int:
        if not 5 <= value <= 3600:
            raise ValueError("must be a number of seconds between 5 and 3600")
        return value

    @field_validator("alert_digest_hour")
    @classmethod
    def _hour_of_day(cls, value: int) -> int:
        if not 0 <= value <= 23:
            raise ValueError("must be an hour of the day between 0 and 23 (UTC)")
        return value

    @field_validator("alert_expiry_days", "alert_no_poll_minutes", "alert_no_webhook_hours", "alert_smtp_port")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be zero or a positive whole number")
        return value

    @field_validator("alert_teams_webhook_url", "alert_slack_webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value()
        if not re.match(r"^https://[^\s/]+", text) and not re.match(r"^http://(127\.0\.0\.1|localhost)[:/]", text):
            raise ValueError("is not an https URL (the incoming webhook URL the channel gave you)")
        return value

    @field_validator("status_page_url")
    @classmethod
    def _page_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("is not a URL, like 'https://func-cosell-abc123.azurewebsites.net/api/status'")
        return value

    @field_validator("backfill_syncs_per_minute")
    @classmethod
    def _positive_rate(cls, value: int) -> int:
        if not 1 <= value <= 6000:
            raise ValueError("must be a whole number of syncs per minute between 1 and 6000")
        return value

    @field_validator("pc_http_timeout_seconds")
    @classmethod
    def _positive_timeout(cls, value: float) -> float:
        if not 0 < value <= 300:
            raise ValueError("must be a number of seconds between 0 and 300")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Settings:
        problems: list[str] = []
        if self.storage_connection is None and not (self.storage_table_uri and self.storage_queue_uri):
            problems.append(
                "AzureWebJobsStorage is missing: set a storage connection string (or "
                "'UseDevelopmentStorage=true' for Azurite), or set both "
                "AzureWebJobsStorage__tableServiceUri and AzureWebJobsStorage__queueServiceUri"
            )
        if self.crm_kind == "salesforce":
            needed = {
                "client_credentials": ["salesforce_client_id", "salesforce_client_secret"],
                "jwt": ["salesforce_client_id", "salesforce_username", "salesforce_private_key"],
                "password": ["salesforce_username", "salesforce_password", "salesforce_security_token"],
            }[self.salesforce_auth]
            problems += [
                f"{alias_of(name)} is missing: it is required when CRM_KIND is 'salesforce' and "
                f"SALESFORCE_AUTH is '{self.salesforce_auth}'"
                for name in needed
                if getattr(self, name) is None
            ]
        if self.crm_kind == "dynamics":
            problems += [
                f"{alias_of(name)} is missing: it is required when CRM_KIND is 'dynamics'"
                for name in ("dataverse_url", "dataverse_tenant_id", "dataverse_client_id", "dataverse_client_secret")
                if getattr(self, name) is None
            ]
        if self.alert_smtp_host:
            problems += [
                f"{alias_of(name)} is missing: it is required when ALERT_SMTP_HOST is set"
                for name in ("alert_email_from", "alert_email_to")
                if not getattr(self, name)
            ]
            if self.alert_smtp_security == "none" and self.alert_smtp_host not in ("127.0.0.1", "localhost"):
                problems.append(
                    "ALERT_SMTP_SECURITY is 'none' for a server that is not on this machine: use 'starttls' or 'ssl'"
                )
        if problems:
            raise SettingsError(problems)
        return self

    @property
    def alert_recipients(self) -> list[str]:
        return [address.strip() for address in (self.alert_email_to or "").split(",") if address.strip()]

    # ---- derived values -------------------------------------------------------------------------
    @property
    def deal_value_field(self) -> str:
        return self.crm_deal_value_field or ("Amount" if self.crm_kind == "salesforce" else "estimatedvalue")

    @property
    def deal_currency_field(self) -> str:
        default = "CurrencyIsoCode" if self.crm_kind == "salesforce" else "transactioncurrencyid"
        return self.crm_deal_currency_field or default

    @property
    def account_country_field(self) -> str:
        default = "BillingCountry" if self.crm_kind == "salesforce" else "address1_country"
        return self.crm_account_country_field or default

    @property
    def webhook_cert_hosts(self) -> list[str]:
        return [host.strip().lower() for host in self.pc_webhook_cert_hosts.split(",") if host.strip()]

    def storage_connection_string(self) -> str | None:
        """The storage connection string with `UseDevelopmentStorage=true` expanded for Azurite."""
        if self.storage_connection is None:
            return None
        return expand_development_storage(self.storage_connection.get_secret_value())

    def describe(self) -> Iterator[tuple[str, str, str]]:
        """(setting, shown value, origin) for every setting; secrets and account keys masked."""
        explicitly_set = self.model_fields_set
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                shown = mask_connection_string(value.get_secret_value()) if name == "storage_connection" else "********"
            elif value is None:
                shown = "(not set)"
            else:
                shown = str(value).lower() if isinstance(value, bool) else str(value)
            yield info.alias or name, shown, "set" if name in explicitly_set else "default"


def alias_of(field_name: str) -> str:
    alias = Settings.model_fields[field_name].alias
    return alias or field_name


def expand_development_storage(connection: str) -> str:
    """`UseDevelopmentStorage=true` -> the explicit Azurite connection string on default ports."""
    if connection.replace(" ", "").lower().rstrip(";") != "usedevelopmentstorage=true":
        return connection
    return (
        f"DefaultEndpointsProtocol=http;AccountName={_DEV_ACCOUNT};AccountKey={_DEV_KEY};"
        f"BlobEndpoint=http://127.0.0.1:10000/{_DEV_ACCOUNT};"
        f"QueueEndpoint=http://127.0.0.1:10001/{_DEV_ACCOUNT};"
        f"TableEndpoint=http://127.0.0.1:10002/{_DEV_ACCOUNT};"
    )


def azurite_connection_string(blob_port: int, queue_port: int, table_port: int) -> str:
    """Connection string of an Azurite started on the given ports (tests pick free ones)."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={_DEV_ACCOUNT};AccountKey={_DEV_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob_port}/{_DEV_ACCOUNT};"
        f"QueueEndpoint=http://127.0.0.1:{queue_port}/{_DEV_ACCOUNT};"
        f"TableEndpoint=http://127.0.0.1:{table_port}/{_DEV_ACCOUNT};"
    )


def mask_connection_string(connection: str) -> str:
    """Hide AccountKey / SharedAccessSignature values, keep the rest readable for troubleshooting."""
    return re.sub(r"(?i)(AccountKey|SharedAccessSignature)=[^;]*", r"\1=********", connection)


def _field_problem(error: Mapping[str, Any]) -> str:
    location = error.get("loc") or ()
    name = str(location[0]) if location else "settings"
    field = next((f for f, info in Settings.model_fields.items() if info.alias == name or f == name), None)
    info = Settings.model_fields[field] if field else None
    name = (info.alias or name) if info else name
    example = (
        (info.json_schema_extra or {}).get("example") if info and isinstance(info.json_schema_extra, dict) else None
    )
    if error.get("type") == "missing" or error.get("input") is None:
        sentence = f"{name} is missing"
    else:
        message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
        if error.get("type") == "literal_error":
            message = message.replace("Input should be", "must be")
        elif error.get("type") == "bool_parsing":
            message = "must be true or false"
        elif error.get("type") in ("float_parsing", "int_parsing"):
            message = "must be a number"
        elif not message.startswith(("is ", "must", "names")):
            message = f"is invalid: {message}"
        sentence = f"{name} {message}"
    if info and info.description:
        sentence += f". {info.description}"
    if example:
        sentence += f" Example: {example}"
    return sentence


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting from `environ` (default: the process environment).

    Empty values count as not set, because Azure shows a cleared app setting as an empty string.
    """
    source = os.environ if environ is None else environ
    aliases = {info.alias for info in Settings.model_fields.values() if info.alias}
    values = {name: value for name, value in source.items() if name in aliases and value.strip() != ""}
    try:
        return Settings.model_validate(values)
    except SettingsError:
        raise
    except ValidationError as error:
        nested = [
            problem
            for item in error.errors()
            if isinstance((ctx := item.get("ctx") or {}).get("error"), SettingsError)
            for problem in ctx["error"].problems
        ]
        problems = [
            _field_problem(item)
            for item in error.errors()
            if not isinstance((item.get("ctx") or {}).get("error"), SettingsError)
        ]
        raise SettingsError(problems + nested) from None


def apply_local_settings_file(path: Path, environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Copy the `Values` of a local.settings.json into the environment where a name is not set
    already, as `func start` does; returns the names applied. Azure never has this file."""
    target = os.environ if environ is None else environ
    if not path.is_file():
        return []
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values") or {}
    except (ValueError, AttributeError) as error:
        raise SettingsError([f'{path} is not valid JSON with a "Values" object: {error}']) from None
    applied = []
    for name, value in values.items():
        if name not in target:
            target[name] = str(value)
            applied.append(name)
    return applied


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, loaded and validated on first use (never at import)."""
    return load_settings()


def reset_settings_cache() -> None:
    """Forget the cached settings (after the environment changed, e.g. in the local host or tests)."""
    get_settings.cache_clear()


def reference_markdown() -> str:
    """The README's configuration reference, generated from the field descriptions."""
    lines: list[str] = []
    current_group = None
    for info in Settings.model_fields.values():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        group = str(extra.get("group", "Other"))
        if group != current_group:
            if current_group is not None:
                lines.append("")
            lines += [f"#### {group}", "", "| setting | default | meaning |", "|---|---|---|"]
            current_group = group
        if info.is_required() or info.default is None:
            default = "required" if _is_always_required(info.alias or "") else "—"
        elif isinstance(info.default, bool):
            default = f"`{str(info.default).lower()}`"
        else:
            default = f"`{info.default}`"
        description = (info.description or "").replace("|", "\\|")
        lines.append(f"| `{info.alias}` | {default} | {description} |")
    return "\n".join(lines) + "\n"


def _is_always_required(alias: str) -> bool:
    return alias in {"CRM_KIND", "PC_TENANT_ID", "PC_CLIENT_ID", "PC_CLIENT_SECRET", "PC_TOKEN_CACHE_KEY"}
