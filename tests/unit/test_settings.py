"""Settings: every missing or malformed value gives an error naming the setting; secrets never print."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.settings import Settings, SettingsError, load_settings, mask_connection_string, reference_markdown
from tests.conftest import base_environment

CONNECTION = "UseDevelopmentStorage=true"
README = Path(__file__).resolve().parents[2] / "README.md"


def problems_for(**overrides: str) -> list[str]:
    environment = {k: v for k, v in base_environment(CONNECTION, **overrides).items() if v != "<unset>"}
    with pytest.raises(SettingsError) as caught:
        load_settings(environment)
    return caught.value.problems


def test_a_complete_sandbox_environment_is_valid() -> None:
    settings = load_settings(base_environment(CONNECTION))
    assert settings.crm_kind == "salesforce"
    assert settings.deal_value_field == "Amount"
    assert settings.storage_connection_string() is not None
    assert "AccountKey=" in (settings.storage_connection_string() or "")


@pytest.mark.parametrize("name", ["CRM_KIND", "PC_TENANT_ID", "PC_CLIENT_ID", "PC_CLIENT_SECRET", "PC_TOKEN_CACHE_KEY"])
def test_each_required_setting_missing_is_named(name: str) -> None:
    problems = problems_for(**{name: "<unset>"})
    assert len(problems) == 1
    assert problems[0].startswith(f"{name} is missing")


def test_an_empty_value_counts_as_missing() -> None:
    assert problems_for(PC_CLIENT_ID="  ")[0].startswith("PC_CLIENT_ID is missing")


def test_storage_missing_says_what_to_set() -> None:
    (problem,) = problems_for(AzureWebJobsStorage="<unset>")
    assert "AzureWebJobsStorage is missing" in problem
    assert "AzureWebJobsStorage__tableServiceUri" in problem


def test_identity_based_storage_is_accepted_instead_of_a_connection_string() -> None:
    environment = base_environment(CONNECTION)
    del environment["AzureWebJobsStorage"]
    environment["AzureWebJobsStorage__tableServiceUri"] = "https://acct.table.core.windows.net"
    environment["AzureWebJobsStorage__queueServiceUri"] = "https://acct.queue.core.windows.net"
    settings = load_settings(environment)
    assert settings.storage_connection_string() is None


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CRM_KIND", "sap", r"^CRM_KIND must be 'salesforce' or 'dynamics'"),
        ("SYNC_COSELL_ONLY", "maybe", r"^SYNC_COSELL_ONLY must be true or false"),
        ("SHOW_SYNC_MARK_IN_NAME", "yes please", r"^SHOW_SYNC_MARK_IN_NAME must be true or false"),
        ("CRM_POLL_SCHEDULE", "*/5 * * * *", r"^CRM_POLL_SCHEDULE is not a valid six-field NCRONTAB"),
        ("PC_RECONCILE_SCHEDULE", "0 99 * * * *", r"^PC_RECONCILE_SCHEDULE is not a valid six-field NCRONTAB"),
        ("PC_TOKEN_REFRESH_SCHEDULE", "daily", r"^PC_TOKEN_REFRESH_SCHEDULE is not a valid six-field NCRONTAB"),
        ("PC_TOKEN_CACHE_KEY", "too-short", r"^PC_TOKEN_CACHE_KEY is not 32 bytes of URL-safe base64"),
        ("PC_API_BASE_URL", "http://api.partner.microsoft.com", r"^PC_API_BASE_URL is not an https URL"),
        ("PC_HTTP_TIMEOUT_SECONDS", "soon", r"^PC_HTTP_TIMEOUT_SECONDS must be a number"),
        ("PC_HTTP_TIMEOUT_SECONDS", "0", r"^PC_HTTP_TIMEOUT_SECONDS must be a number of seconds between 0 and 300"),
        ("TLS_CA_BUNDLE", "/no/such/file.pem", r"^TLS_CA_BUNDLE names no readable file"),
        ("SALESFORCE_AUTH", "oauth", r"^SALESFORCE_AUTH must be 'client_credentials', 'jwt' or 'password'"),
        ("DATAVERSE_URL", "contoso.crm.dynamics.com", r"^DATAVERSE_URL is not an https URL"),
    ],
)
def test_malformed_values_are_named_with_what_a_valid_value_looks_like(name: str, value: str, expected: str) -> None:
    problems = problems_for(**{name: value})
    assert len(problems) == 1, problems
    assert re.search(expected, problems[0]), problems[0]
    assert "Example:" in problems[0] or "like" in problems[0]


def test_several_problems_are_reported_together() -> None:
    problems = problems_for(CRM_KIND="sap", PC_CLIENT_ID="<unset>", CRM_POLL_SCHEDULE="often")
    assert {p.split(" ")[0] for p in problems} == {"CRM_KIND", "PC_CLIENT_ID", "CRM_POLL_SCHEDULE"}


@pytest.mark.parametrize(
    ("auth", "required"),
    [
        ("client_credentials", {"SALESFORCE_CLIENT_ID", "SALESFORCE_CLIENT_SECRET"}),
        ("jwt", {"SALESFORCE_CLIENT_ID", "SALESFORCE_USERNAME", "SALESFORCE_PRIVATE_KEY"}),
        ("password", {"SALESFORCE_USERNAME", "SALESFORCE_PASSWORD", "SALESFORCE_SECURITY_TOKEN"}),
    ],
)
def test_salesforce_credentials_required_depend_on_the_sign_in_mode(auth: str, required: set[str]) -> None:
    problems = problems_for(SALESFORCE_AUTH=auth, SALESFORCE_CLIENT_ID="<unset>", SALESFORCE_CLIENT_SECRET="<unset>")
    assert {p.split(" ")[0] for p in problems} == required


def test_dynamics_needs_its_connection_settings() -> None:
    problems = problems_for(CRM_KIND="dynamics")
    assert {p.split(" ")[0] for p in problems} == {
        "DATAVERSE_URL",
        "DATAVERSE_TENANT_ID",
        "DATAVERSE_CLIENT_ID",
        "DATAVERSE_CLIENT_SECRET",
    }


def test_crm_field_defaults_follow_the_crm_kind_and_can_be_overridden() -> None:
    dynamics = load_settings(
        base_environment(
            CONNECTION,
            CRM_KIND="dynamics",
            DATAVERSE_URL="https://contoso.crm4.dynamics.com",
            DATAVERSE_TENANT_ID="t",
            DATAVERSE_CLIENT_ID="c",
            DATAVERSE_CLIENT_SECRET="s",
        )
    )
    assert (dynamics.deal_value_field, dynamics.deal_currency_field, dynamics.account_country_field) == (
        "estimatedvalue",
        "transactioncurrencyid",
        "address1_country",
    )
    custom = load_settings(base_environment(CONNECTION, CRM_DEAL_VALUE_FIELD="Total_ACV__c"))
    assert custom.deal_value_field == "Total_ACV__c"


def test_secrets_never_appear_in_describe_repr_or_errors() -> None:
    secret_values = {
        "PC_CLIENT_SECRET": "pc-secret-value-123",
        "SALESFORCE_CLIENT_SECRET": "sf-secret-value-456",
        "AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0LWtleS03ODk=;EndpointSuffix=core.windows.net",
    }
    settings = load_settings(base_environment(CONNECTION, **secret_values))
    printed = "\n".join(f"{name}={value}" for name, value, _ in settings.describe()) + repr(settings) + str(settings)
    for value in (
        "pc-secret-value-123",
        "sf-secret-value-456",
        "c2VjcmV0LWtleS03ODk=",
        settings.pc_token_cache_key.get_secret_value(),
    ):
        assert value not in printed
    assert "AccountName=acct" in printed  # the non-secret part stays readable for troubleshooting
    with pytest.raises(SettingsError) as caught:
        load_settings(base_environment(CONNECTION, PC_CLIENT_SECRET="pc-secret-value-123", CRM_KIND="sap"))
    assert "pc-secret-value-123" not in str(caught.value)


def test_mask_connection_string_hides_keys_and_signatures() -> None:
    masked = mask_connection_string("AccountName=a;AccountKey=abc==;SharedAccessSignature=sv=1&sig=xyz")
    assert "abc" not in masked and "xyz" not in masked
    assert masked.startswith("AccountName=a;")


def test_every_setting_has_a_description_and_a_group() -> None:
    for name, info in Settings.model_fields.items():
        assert info.alias, name
        assert info.description, name
        assert isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("group"), name


def test_readme_configuration_reference_matches_the_settings() -> None:
    """The README's table is generated by `python -m shared settings-reference`; keep it current."""
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- settings-reference:start -->") + len("<!-- settings-reference:start -->")
    end = text.index("<!-- settings-reference:end -->")
    assert text[start:end].strip() == reference_markdown().strip()
