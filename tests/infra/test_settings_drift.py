"""Keeps the settings the code reads, the app settings in the Bicep and local.settings.sample.json in step.

A deploy that forgets one app setting, secret, queue or table fails at 2 a.m., so every name must
be on all three sides (or in the one explicit list of exceptions below), and where two sides both
state a default they must agree. The Bicep cannot be compiled here; it is read with a small,
strict parser of its flat `NAME: value` blocks, which fails loudly on anything it does not expect.
"""

from __future__ import annotations

import json
import re
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from shared.settings import Settings
from shared.sync.queues import SYNC_POISON_QUEUE, SYNC_QUEUE
from shared.sync.state import ALL_TABLES

ROOT = Path(__file__).resolve().parents[2]
MAIN_BICEP = ROOT / "infra" / "main.bicep"
API_BICEP = ROOT / "infra" / "app" / "api.bicep"
PARAMETERS = ROOT / "infra" / "main.parameters.json"
SAMPLE = ROOT / "local.settings.sample.json"
DEPLOY_GUIDE = ROOT / "docs" / "deploy.md"

CODE, BICEP, LOCAL = "code", "bicep", "local.settings.sample.json"
EVERYWHERE = frozenset({CODE, BICEP, LOCAL})

# The only names allowed on fewer than all three sides, with where they live and why.
ONLY_ON_SOME_SIDES: dict[str, tuple[frozenset[str], str]] = {
    # Local only.
    "FUNCTIONS_WORKER_RUNTIME": (
        frozenset({LOCAL}),
        "Core Tools needs it; Flex Consumption takes the runtime from functionAppConfig and refuses it",
    ),
    "AzureWebJobsFeatureFlags": (
        frozenset({LOCAL}),
        "EnableWorkerIndexing for older Core Tools; the default for Python v2 apps in Azure",
    ),
    "SANDBOX_FUNCTION_KEY": (
        frozenset({CODE, LOCAL}),
        "function key of the sandbox host (the status page accepts it there); Azure issues its own keys",
    ),
    "AzureWebJobsStorage": (
        frozenset({CODE, LOCAL}),
        "a connection string locally (Azurite); in Azure the identity-based AzureWebJobsStorage__* settings",
    ),
    "WEBSITE_AUTH_ENABLED": (
        frozenset({CODE}),
        "set by App Service itself when App Service authentication (infra/app/statusauth.bicep) is on",
    ),
    # Azure only: identity-based storage, read by our code and by the host.
    "AzureWebJobsStorage__tableServiceUri": (frozenset({CODE, BICEP}), "identity-based storage in Azure"),
    "AzureWebJobsStorage__queueServiceUri": (frozenset({CODE, BICEP}), "identity-based storage in Azure"),
    "AzureWebJobsStorage__clientId": (frozenset({CODE, BICEP}), "the user-assigned identity for storage in Azure"),
    # Azure only, read by the platform or libraries rather than by shared/settings.py.
    "AzureWebJobsStorage__credential": (frozenset({BICEP}), "the host: 'managedidentity'"),
    "AzureWebJobsStorage__blobServiceUri": (frozenset({BICEP}), "the host: locks, timer state"),
    "APPLICATIONINSIGHTS_CONNECTION_STRING": (frozenset({BICEP}), "the host: telemetry destination"),
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": (frozenset({BICEP}), "the host: Entra auth for telemetry"),
    "AZURE_CLIENT_ID": (frozenset({BICEP}), "azure-identity: which managed identity DefaultAzureCredential uses"),
    "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": (
        frozenset({BICEP}),
        "the Python worker: OpenTelemetry to Application Insights (host.json telemetryMode)",
    ),
}

# Tables declared in the Bicep before the code that uses them lands (name -> who will use it).
DECLARED_AHEAD_OF_CODE = {"tokencache": "the encrypted Partner Center token cache (partner-center login)"}

# App settings Flex Consumption refuses (deployment fails) or that would re-enable shared keys.
REFUSED_IN_AZURE = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_NODE_DEFAULT_VERSION",
    "AzureWebJobsStorage",
}

KEY_VAULT_REFERENCE = re.compile(r"keyVaultReference\(\s*[\w.]+\s*,\s*'([a-z0-9-]+)'\s*\)")


# ---- a strict reader of the Bicep's flat blocks -----------------------------------------------------
class BicepFormatError(ValueError):
    """The Bicep no longer has the simple shape this test reads: fix the Bicep or the parser."""


@dataclass(frozen=True)
class BicepValue:
    """One app setting value: a string literal, a parameter reference, or any other expression."""

    source: str
    literal: str | None = None
    parameter: str | None = None


def strip_comment(line: str) -> str:
    """Drop a trailing `//` comment, but not `//` inside a 'string' (URLs)."""
    in_string = False
    index = 0
    while index < len(line):
        char = line[index]
        if char == "\\" and in_string:
            index += 2
            continue
        if char == "'":
            in_string = not in_string
        elif not in_string and line.startswith("//", index):
            return line[:index].rstrip()
        index += 1
    return line.rstrip()


def block_lines(text: str, opening: str, closing: str, *, where: str) -> list[str]:
    """The non-blank, comment-free lines between `opening` (a whole line) and the next `closing` line."""
    lines = text.splitlines()
    starts = [number for number, line in enumerate(lines) if line.rstrip() == opening]
    if len(starts) != 1:
        raise BicepFormatError(f"{where}: expected exactly one line {opening!r}, found {len(starts)}")
    body: list[str] = []
    for line in lines[starts[0] + 1 :]:
        if line.rstrip() == closing:
            return body
        stripped = strip_comment(line).strip()
        if stripped:
            body.append(stripped)
    raise BicepFormatError(f"{where}: {opening!r} is never closed by a line {closing!r}")


def parse_value(source: str) -> BicepValue:
    if re.fullmatch(r"'(?:[^'\\$]|\\.|\$(?!\{))*'", source):
        return BicepValue(source, literal=source[1:-1].replace("\\'", "'"))
    if re.fullmatch(r"[a-z][A-Za-z0-9]*", source):
        return BicepValue(source, parameter=source)
    return BicepValue(source)


def object_block(text: str, variable: str, *, where: str) -> dict[str, BicepValue]:
    """`var <variable> = {` ... `}` as {name: value}; every line must be one `NAME: value` entry."""
    entries: dict[str, BicepValue] = {}
    for line in block_lines(text, f"var {variable} = {{", "}", where=where):
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*):\s*(\S.*)", line)
        if match is None:
            raise BicepFormatError(f"{where} `var {variable}`: not a flat `NAME: value` entry: {line!r}")
        name, value = match.groups()
        if value.endswith(("{", "[", "(")):
            raise BicepFormatError(f"{where} `var {variable}`: {name} spans several lines; keep one entry per line")
        if name in entries:
            raise BicepFormatError(f"{where} `var {variable}`: {name} appears twice")
        entries[name] = parse_value(value)
    return entries


def string_list_block(text: str, variable: str, *, where: str) -> list[str]:
    """`var <variable> = [` ... `]` of one 'string' per line."""
    names = []
    for line in block_lines(text, f"var {variable} = [", "]", where=where):
        match = re.fullmatch(r"'([^'$]+)'", line)
        if match is None:
            raise BicepFormatError(f"{where} `var {variable}`: not a plain 'string' entry: {line!r}")
        names.append(match.group(1))
    return names


@dataclass(frozen=True)
class BicepParameter:
    name: str
    has_default: bool
    default_literal: str | None


def parameters(text: str) -> dict[str, BicepParameter]:
    found: dict[str, BicepParameter] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"param (\w+) (\w+)(?: = (.+))?", strip_comment(line))
        if match:
            name, _type, default = match.groups()
            literal = parse_value(default).literal if default else None
            found[name] = BicepParameter(name, default is not None, literal)
    return found


# ---- the three sides -------------------------------------------------------------------------------
def code_settings() -> dict[str, FieldInfo]:
    return {info.alias or name: info for name, info in Settings.model_fields.items()}


@pytest.fixture(scope="module")
def main_bicep() -> str:
    return MAIN_BICEP.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bicep_settings(main_bicep: str) -> dict[str, BicepValue]:
    own = object_block(main_bicep, "appSettings", where="infra/main.bicep")
    platform = object_block(API_BICEP.read_text(encoding="utf-8"), "platformSettings", where="infra/app/api.bicep")
    both = own.keys() & platform.keys()
    assert not both, f"set in both main.bicep and app/api.bicep (one silently wins in union()): {sorted(both)}"
    return own | platform


@pytest.fixture(scope="module")
def sample_settings() -> dict[str, str]:
    values = json.loads(SAMPLE.read_text(encoding="utf-8"))["Values"]
    assert isinstance(values, dict)
    return {str(name): str(value) for name, value in values.items()}


def effective_bicep_literal(value: BicepValue, params: dict[str, BicepParameter]) -> str | None:
    """The value Azure gets when nobody overrides a parameter, if the Bicep states it literally."""
    if value.literal is not None:
        return value.literal
    if value.parameter is not None:
        if value.parameter not in params:
            raise BicepFormatError(f"infra/main.bicep: {value.parameter} is neither a param nor a literal")
        return params[value.parameter].default_literal
    return None


def same_as_default(info: FieldInfo, text: str) -> bool:
    default = info.default
    if isinstance(default, bool):
        return text.strip().lower() == str(default).lower()
    if isinstance(default, int | float):
        try:
            return float(text) == float(default)
        except ValueError:
            return False
    return text == str(default)


def is_secret(info: FieldInfo) -> bool:
    return info.annotation is SecretStr or SecretStr in typing.get_args(info.annotation)


def points_at_sandbox(value: str) -> bool:
    # The sample deliberately aims connection settings at the local simulators; those are not defaults.
    return "127.0.0.1" in value or "localhost" in value or ".sandbox/" in value


# ---- tests -----------------------------------------------------------------------------------------
def test_every_setting_is_on_all_three_sides_or_a_listed_exception(
    bicep_settings: dict[str, BicepValue], sample_settings: dict[str, str]
) -> None:
    sides = {CODE: set(code_settings()), BICEP: set(bicep_settings), LOCAL: set(sample_settings)}
    problems = []
    for name in sorted(set().union(*sides.values()), key=str.lower):
        actual = frozenset(side for side, names in sides.items() if name in names)
        expected = ONLY_ON_SOME_SIDES.get(name, (EVERYWHERE, ""))[0]
        if actual != expected:
            missing = ", ".join(sorted(expected - actual)) or "-"
            extra = ", ".join(sorted(actual - expected)) or "-"
            problems.append(f"{name}: missing from [{missing}], unexpected in [{extra}]")
    assert not problems, "settings drifted (add them everywhere, or to ONLY_ON_SOME_SIDES with a reason):\n" + (
        "\n".join(problems)
    )


def test_defaults_agree_where_two_sides_state_one(
    main_bicep: str, bicep_settings: dict[str, BicepValue], sample_settings: dict[str, str]
) -> None:
    params = parameters(main_bicep)
    problems = []
    compared = 0
    for name, info in code_settings().items():
        if info.default is None:
            continue
        bicep_value = bicep_settings.get(name)
        stated = effective_bicep_literal(bicep_value, params) if bicep_value else None
        if stated:  # empty = not set, so the code default applies anyway
            compared += 1
            if not same_as_default(info, stated):
                problems.append(f"{name}: code default {info.default!r}, Bicep {stated!r}")
        sample = sample_settings.get(name, "")
        if sample and not points_at_sandbox(sample):
            compared += 1
            if not same_as_default(info, sample):
                problems.append(f"{name}: code default {info.default!r}, local.settings.sample.json {sample!r}")
    assert not problems, "defaults differ:\n" + "\n".join(problems)
    assert compared >= 20, f"only {compared} defaults compared: is the Bicep parser still reading the values?"


def test_settings_the_host_binds_are_never_empty_in_azure(
    main_bicep: str, bicep_settings: dict[str, BicepValue]
) -> None:
    # `%NAME%` in a trigger is resolved by the host from app settings alone: the code default never applies.
    bound = set(re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)%", (ROOT / "function_app.py").read_text(encoding="utf-8")))
    params = parameters(main_bicep)
    empty = sorted(
        name
        for name in bound
        if name not in bicep_settings or effective_bicep_literal(bicep_settings[name], params) == ""
    )
    assert not empty, f"trigger binding expressions without a value in the Bicep: {empty}"
    for name in bound & set(bicep_settings):
        parameter = bicep_settings[name].parameter
        assert parameter is None or params[parameter].has_default, f"{name}: its parameter needs a default"


def test_every_secret_is_a_key_vault_reference_and_nothing_else_is(bicep_settings: dict[str, BicepValue]) -> None:
    settings = code_settings()
    secrets = {name for name, info in settings.items() if is_secret(info) and name in bicep_settings}
    assert len(secrets) >= 7, f"expected the Partner Center and CRM secrets, found {sorted(secrets)}"
    for name, value in bicep_settings.items():
        references = KEY_VAULT_REFERENCE.findall(value.source)
        if name in secrets:
            # One secret per setting, named after it: PC_CLIENT_SECRET -> pc-client-secret.
            assert references == [name.lower().replace("_", "-")], f"{name} must be keyVaultReference(..., '<name>')"
        else:
            assert not references and "@Microsoft.KeyVault" not in value.source, f"{name} is not a secret"


def test_every_key_vault_secret_is_in_the_deployment_guide(bicep_settings: dict[str, BicepValue]) -> None:
    guide = DEPLOY_GUIDE.read_text(encoding="utf-8")
    secret_names = {ref for value in bicep_settings.values() for ref in KEY_VAULT_REFERENCE.findall(value.source)}
    missing = sorted(name for name in secret_names if name not in guide)
    assert not missing, f"docs/deploy.md never says how to set these Key Vault secrets: {missing}"


def storage_names_in_code(suffix: str) -> set[str]:
    """Module-level `*_TABLE = "name"` / `*_QUEUE = "name"` constants anywhere in shared/."""
    # A regex, not ast.parse: CPython 3.11.7's ast module can fail with "AST constructor recursion
    # depth mismatch" late in a long test session (gh-106905), which has nothing to do with our files.
    constant = re.compile(rf'^[A-Z][A-Z0-9_]*{re.escape(suffix)}(?:: *str)? *= *"([^"]+)"', re.MULTILINE)
    return {name for path in (ROOT / "shared").rglob("*.py") for name in constant.findall(path.read_text("utf-8"))}


def test_every_queue_and_table_the_code_uses_is_declared(main_bicep: str) -> None:
    queues = string_list_block(main_bicep, "queueNames", where="infra/main.bicep")
    tables = string_list_block(main_bicep, "tableNames", where="infra/main.bicep")
    code_queues = storage_names_in_code("_QUEUE") | {SYNC_QUEUE, SYNC_POISON_QUEUE}
    code_tables = storage_names_in_code("_TABLE") | set(ALL_TABLES)
    assert code_queues - set(queues) == set(), "queues missing from infra/main.bicep `queueNames`"
    assert code_tables - set(tables) == set(), "tables missing from infra/main.bicep `tableNames`"
    unused = set(tables) - code_tables - set(DECLARED_AHEAD_OF_CODE)
    assert not unused, f"tables declared but used nowhere in shared/: {sorted(unused)}"
    assert set(queues) == code_queues, (
        f"queues declared but used nowhere in shared/: {sorted(set(queues) - code_queues)}"
    )
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", name) for name in tables), (
        "Azure table names are alphanumeric"
    )


def test_parameters_file_maps_each_setting_parameter_to_the_setting_name(
    main_bicep: str, bicep_settings: dict[str, BicepValue]
) -> None:
    declared = parameters(main_bicep)
    mapped = {name: entry["value"] for name, entry in json.loads(PARAMETERS.read_text())["parameters"].items()}
    assert set(mapped) <= set(declared), f"main.parameters.json names unknown params: {set(mapped) - set(declared)}"
    unmapped = [name for name, param in declared.items() if not param.has_default and name not in mapped]
    assert not unmapped, f"params without a default that azd cannot fill: {unmapped}"
    for setting, value in bicep_settings.items():
        if value.parameter is not None and value.parameter in declared:
            # So an admin always types the app setting's own name: `azd env set CRM_KIND dynamics`.
            assert mapped.get(value.parameter) == f"${{{setting}}}", f"{value.parameter} should map to ${{{setting}}}"


def test_no_setting_that_flex_consumption_refuses(bicep_settings: dict[str, BicepValue]) -> None:
    assert not REFUSED_IN_AZURE & set(bicep_settings)


def test_secure_defaults_and_one_python_version(main_bicep: str) -> None:
    api = API_BICEP.read_text(encoding="utf-8")
    keyvault = (ROOT / "infra" / "app" / "keyvault.bicep").read_text(encoding="utf-8")
    assert "allowSharedKeyAccess: false" in main_bicep, "storage must have shared key access disabled"
    assert "disableLocalAuth: true" in main_bicep, "App Insights must accept Entra-authenticated telemetry only"
    assert "enableRbacAuthorization: true" in keyvault, "Key Vault must be in RBAC mode"
    assert "keyVaultAccessIdentityResourceId: identityId" in api, "Key Vault references need the UAMI"
    runtime = re.search(r"param runtimeVersion string = '(\d+\.\d+)'", api)
    python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert runtime and f">={runtime.group(1)}" in python, f"Bicep Python {runtime} vs pyproject {python}"


# ---- the parser itself -----------------------------------------------------------------------------
BICEP_SAMPLE = """
var appSettings = {
  // a comment line
  URL: 'https://example.com/path' // a trailing comment after a URL
  QUOTED: 'it\\'s'
  FROM_PARAM: someParam
  COMPUTED: cond ? 'a' : 'b'
}
"""


def test_parser_keeps_urls_resolves_kinds_and_refuses_nested_objects() -> None:
    entries = object_block(BICEP_SAMPLE, "appSettings", where="sample")
    assert entries["URL"].literal == "https://example.com/path"
    assert entries["QUOTED"].literal == "it's"
    assert entries["FROM_PARAM"].parameter == "someParam"
    assert entries["COMPUTED"].literal is None and entries["COMPUTED"].parameter is None
    with pytest.raises(BicepFormatError, match="one entry per line"):
        object_block("var appSettings = {\n  NESTED: {\n    A: 'b'\n  }\n}\n", "appSettings", where="sample")
    with pytest.raises(BicepFormatError, match="never closed"):
        object_block("var appSettings = {\n  A: 'b'\n", "appSettings", where="sample")
