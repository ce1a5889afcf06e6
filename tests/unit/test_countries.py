"""Customer country -> ISO 3166-1 alpha-2, as Partner Center requires it."""

from __future__ import annotations

import iso3166
import pytest

from shared.mapping import countries
from shared.mapping.countries import CountryError, country_code

ASSIGNED_CODES = sorted(c.alpha2 for c in iso3166.countries if c.alpha2 != "XK")


def test_every_assigned_code_is_known() -> None:
    assert len(ASSIGNED_CODES) == 249  # ISO 3166-1 assigns 249 alpha-2 codes


@pytest.mark.parametrize("code", ASSIGNED_CODES)
@pytest.mark.parametrize("accept_names", [False, True])
def test_every_assigned_code_maps_to_itself(code: str, accept_names: bool) -> None:
    assert country_code(code, accept_names=accept_names) == code
    assert country_code(f" {code.lower()}\t", accept_names=accept_names) == code


@pytest.mark.parametrize("value", ["de", "De", "dE", " DE ", "\tnl\n", "gb"])
def test_codes_in_any_case_and_spacing(value: str) -> None:
    assert country_code(value, accept_names=False) == value.strip().upper()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # ISO short names, any case, accents and punctuation normalised
        ("Germany", "DE"),
        ("  GERMANY ", "DE"),
        ("germany", "DE"),
        ("United States of America", "US"),
        ("Viet Nam", "VN"),
        ("Czechia", "CZ"),
        ("Türkiye", "TR"),
        ("Turkiye", "TR"),
        ("Côte d’Ivoire", "CI"),
        ("Cote d'Ivoire", "CI"),
        ("Åland Islands", "AX"),
        ("Aland Islands", "AX"),
        ("Curacao", "CW"),
        ("Bosnia & Herzegovina", "BA"),
        ("St. Lucia", "LC"),
        ("St Kitts & Nevis", "KN"),
        ("The Netherlands", "NL"),
        ("Guinea-Bissau", "GW"),
        ("Guinea Bissau", "GW"),
        ("Equatorial Guinea", "GQ"),
        ("Papua New Guinea", "PG"),
        ("Sudan", "SD"),
        ("South Sudan", "SS"),
        ("Eswatini", "SZ"),
        ("Taiwan", "TW"),
        ("Palestine", "PS"),
        # ISO's inverted and parenthesised names, and the forms derived from them
        ("Korea, Republic of", "KR"),
        ("Republic of Korea", "KR"),
        ("Democratic People's Republic of Korea", "KP"),
        ("Iran, Islamic Republic of", "IR"),
        ("Iran", "IR"),
        ("Bolivia", "BO"),
        ("Tanzania", "TZ"),
        ("United Republic of Tanzania", "TZ"),
        ("Democratic Republic of the Congo", "CD"),
        ("Falkland Islands", "FK"),
        ("Falkland Islands (Malvinas)", "FK"),
        ("Virgin Islands, British", "VG"),
        ("Sint Maarten", "SX"),
        # alpha-3 codes
        ("DEU", "DE"),
        ("deu", "DE"),
        ("USA", "US"),
        ("GBR", "GB"),
        # curated aliases
        ("U.S.A.", "US"),
        ("United States", "US"),
        ("UK", "GB"),
        ("uk", "GB"),
        ("EL", "GR"),
        ("United Kingdom", "GB"),
        ("Great Britain", "GB"),
        ("England", "GB"),
        ("Northern Ireland", "GB"),
        ("Russia", "RU"),
        ("South Korea", "KR"),
        ("North Korea", "KP"),
        ("Vietnam", "VN"),
        ("Czech Republic", "CZ"),
        ("Turkey", "TR"),
        ("Ivory Coast", "CI"),
        ("Swaziland", "SZ"),
        ("Nauru", "NR"),
        ("Macau", "MO"),
        ("Hong Kong SAR", "HK"),
        ("DRC", "CD"),
        ("Republic of the Congo", "CG"),
        ("British Virgin Islands", "VG"),
        ("U.S. Virgin Islands", "VI"),
        ("North Macedonia", "MK"),
        ("UAE", "AE"),
    ],
)
def test_names_with_accept_names(value: str, expected: str) -> None:
    assert country_code(value, accept_names=True) == expected


@pytest.mark.parametrize(
    ("value", "suggested"),
    [("Germany", "DE"), ("DEU", "DE"), ("UK", "GB"), ("United States", "US"), ("Korea, Republic of", "KR")],
)
def test_names_without_accept_names_suggest_the_code(value: str, suggested: str) -> None:
    with pytest.raises(CountryError) as raised:
        country_code(value, accept_names=False)
    assert str(raised.value) == f"customer country '{value}' is not a two-letter ISO 3166 code (use {suggested})"


def test_the_spec_example_message() -> None:
    with pytest.raises(
        CountryError, match=r"^customer country 'Germany' is not a two-letter ISO 3166 code \(use DE\)$"
    ):
        country_code(" Germany ", accept_names=False)


@pytest.mark.parametrize(
    ("value", "candidates"),
    [
        ("Congo", "CG or CD"),
        ("congo", "CG or CD"),
        ("Korea", "KR or KP"),
        ("Guinea", "GN, GQ or GW"),
        ("Virgin Islands", "VG or VI"),
        ("Macedonia", "MK or GR"),
        ("St. Martin", "MF or SX"),
        ("Netherlands Antilles", "BQ, CW or SX"),
        ("Serbia & Montenegro", "RS or ME"),
    ],
)
def test_ambiguous_names_list_the_candidates(value: str, candidates: str) -> None:
    with pytest.raises(CountryError) as raised:
        country_code(value, accept_names=True)
    assert str(raised.value) == f"customer country '{value}' is ambiguous ({candidates}); use the two-letter code"
    with pytest.raises(CountryError) as strict:
        country_code(value, accept_names=False)
    assert str(strict.value) == f"customer country '{value}' is not a two-letter ISO 3166 code (use {candidates})"


def test_no_name_is_ambiguous_without_a_documented_reason() -> None:
    # Two ISO names sharing a derived form (or an alias clashing with one) would make a new
    # ambiguous name; each must be a deliberate entry in _AMBIGUOUS, with its comment.
    ambiguous = {key for key, codes in countries._tables().by_name.items() if len(codes) > 1}
    assert ambiguous == {countries._normalise(name) for name in countries._AMBIGUOUS}


@pytest.mark.parametrize(
    "value",
    [
        "Atlantis",
        "Holland",  # two provinces; deliberately not an alias
        "US of A",
        "XK",  # user-assigned (Kosovo), not assigned by ISO
        "Kosovo",
        "AN",  # withdrawn (Netherlands Antilles)
        "ZZ",
        "D",
        "DEUX",
        "276",  # numeric codes are not accepted
        "Germany / Austria",
        "🇩🇪",
        "-",
        "The",
    ],
)
@pytest.mark.parametrize("accept_names", [False, True])
def test_junk_is_refused_plainly(value: str, accept_names: bool) -> None:
    with pytest.raises(CountryError) as raised:
        country_code(value, accept_names=accept_names)
    assert str(raised.value) == f"customer country '{value}' is not a two-letter ISO 3166 code"


@pytest.mark.parametrize("value", [None, "", "   ", "\n\t"])
@pytest.mark.parametrize("accept_names", [False, True])
def test_missing_country(value: str | None, accept_names: bool) -> None:
    with pytest.raises(CountryError, match=r"^customer country is missing$"):
        country_code(value, accept_names=accept_names)


def test_a_long_value_is_quoted_on_one_short_line() -> None:
    with pytest.raises(CountryError) as raised:
        country_code("Somewhere\nfar " + "away " * 30, accept_names=True)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("customer country 'Somewhere far away away")
    assert "…' is not a two-letter ISO 3166 code" in message
    assert len(message) < 100


def test_a_value_that_is_not_text_is_refused() -> None:
    with pytest.raises(CountryError, match=r"^customer country must be text, not int$"):
        country_code(276, accept_names=True)  # type: ignore[arg-type]


def test_country_error_is_a_value_error() -> None:
    assert issubclass(CountryError, ValueError)
