"""Customer country of a CRM account -> the ISO 3166-1 alpha-2 code Partner Center requires.

Partner Center refuses a referral whose `customerProfile.address.country` is not a two-letter ISO
3166 code, while CRM country fields (Salesforce `BillingCountry`, Dataverse `address1_country`) are
free text. `country_code` either returns the code or raises `CountryError` with a sentence a seller
can act on. Pure and cached: the lookup tables are built once, on first use.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator, Mapping
from typing import NamedTuple

__all__ = ["CountryError", "country_code"]

# iso3166 also lists XK (Kosovo). XK is a user-assigned code that ISO 3166-1 does not assign, and
# Partner Center asks for an ISO code, so it is refused like any other unassigned code.
_NOT_ASSIGNED_BY_ISO = frozenset({"XK"})

# Common names that clearly mean ONE country, beyond what the ISO names give (see `_iso_names`).
# Keys are written naturally; they are normalised like the input (case, accents, punctuation,
# "St" = "Saint", a leading "The").
_ALIASES: Mapping[str, str] = {
    "UK": "GB",  # ISO reserves UK for the United Kingdom on request; the EU uses it
    "EL": "GR",  # ISO reserves EL for Greece on request; the EU uses it
    "United Kingdom": "GB",
    "Great Britain": "GB",
    "Britain": "GB",
    # The UK's constituent countries have no ISO codes of their own; a CRM often holds them.
    "England": "GB",
    "Scotland": "GB",
    "Wales": "GB",
    "Northern Ireland": "GB",
    "United States": "US",
    "UAE": "AE",
    "Russia": "RU",
    "South Korea": "KR",
    "North Korea": "KP",
    "Vietnam": "VN",
    "Laos": "LA",
    "Syria": "SY",
    "Brunei": "BN",
    "Czech Republic": "CZ",
    "Slovak Republic": "SK",
    "Kyrgyz Republic": "KG",
    "Turkey": "TR",
    "Ivory Coast": "CI",
    "Cape Verde": "CV",
    "Swaziland": "SZ",
    "Burma": "MM",
    "East Timor": "TL",
    "Vatican": "VA",
    "Vatican City": "VA",
    "Macau": "MO",
    "Nauru": "NR",  # iso3166 3.0.0 names NR only by its Nauruan name, "Naoero"
    "Bosnia": "BA",
    "Bosnia-Herzegovina": "BA",
    "Republic of Ireland": "IE",
    "People's Republic of China": "CN",
    "Hong Kong SAR": "HK",  # Microsoft's own spelling, as in Dynamics 365 country lists
    "Macao SAR": "MO",
    "Republic of the Congo": "CG",
    "Congo-Brazzaville": "CG",
    "Congo-Kinshasa": "CD",
    "DR Congo": "CD",
    "DRC": "CD",
    "British Virgin Islands": "VG",
    "US Virgin Islands": "VI",
    "Republic of Macedonia": "MK",  # North Macedonia's constitutional name until 2019
    "Former Yugoslav Republic of Macedonia": "MK",  # its ISO name until 2019
    "Saint Maarten": "SX",
}

# Names that several countries answer to: refused, listing the candidates, because a referral in
# the wrong country goes to the wrong Microsoft sellers. Each entry says why it is ambiguous.
# Deliberately NOT ambiguous: "Sudan" (SD; South Sudan, independent since 2011, is always named in
# full), "Samoa" (WS; American Samoa likewise), "Niger" / "Nigeria", "Dominica" / "Dominican
# Republic", "Ireland" (IE; Northern Ireland is named in full), "Georgia" (a country field holds the
# country, not the US state). "Holland" is left out of the aliases altogether: strictly it names
# two provinces, and the Dutch government asks not to use it for the country (both provinces are
# in NL, so "Holland" -> NL could be added if sellers ask for it).
_AMBIGUOUS: Mapping[str, tuple[str, ...]] = {
    # Both the Republic of the Congo (Brazzaville) and the Democratic Republic of the Congo
    # (Kinshasa) are called "Congo"; ISO's short name for CG is plain "Congo", yet people use it
    # for either.
    "Congo": ("CG", "CD"),
    # Both Koreas carry the name; it usually means the South, but "usually" is not good enough.
    "Korea": ("KR", "KP"),
    # ISO's short name for GN, but Equatorial Guinea and Guinea-Bissau are also shortened to
    # "Guinea". Papua New Guinea is always named in full, so it is not a candidate.
    "Guinea": ("GN", "GQ", "GW"),
    # The British (VG) and the U.S. (VI) Virgin Islands are neighbouring territories.
    "Virgin Islands": ("VG", "VI"),
    # North Macedonia's short name until 2019, and a region of Greece; since the Prespa agreement a
    # bare "Macedonia" names no single country.
    "Macedonia": ("MK", "GR"),
    # One island shared by France (MF, Saint-Martin) and the Netherlands (SX, Sint Maarten);
    # English calls the whole island Saint Martin.
    "Saint Martin": ("MF", "SX"),
    # Dissolved in 2010 (its code AN withdrawn) into BQ, CW and SX.
    "Netherlands Antilles": ("BQ", "CW", "SX"),
    # Dissolved in 2006 (its code CS withdrawn) into Serbia and Montenegro.
    "Serbia and Montenegro": ("RS", "ME"),
}

_MAX_SHOWN = 40  # characters of a bad value quoted back in an error (it ends up in an audit line)


class CountryError(ValueError):
    """The value cannot be read as one ISO 3166 country; str(error) is a plain-language sentence
    for a seller, e.g. "customer country 'Germany' is not a two-letter ISO 3166 code (use DE)"."""


def country_code(value: str | None, *, accept_names: bool) -> str:
    """The upper-case ISO 3166-1 alpha-2 code for `value`.

    An assigned alpha-2 code is always accepted, in any case and with surrounding spaces. With
    `accept_names`, so are alpha-3 codes, ISO names and the common names in `_ALIASES`; names
    several countries answer to (`_AMBIGUOUS`) are refused with the candidates. Without it,
    anything else is refused, suggesting the code when the value names one country.
    """
    if value is None:
        raise CountryError("customer country is missing")
    if not isinstance(value, str):  # CRM JSON can hold anything; the type hint is no guarantee
        raise CountryError(f"customer country must be text, not {type(value).__name__}")
    stripped = value.strip()
    if not stripped:
        raise CountryError("customer country is missing")
    tables = _tables()
    if len(stripped) == 2 and stripped.upper() in tables.assigned:
        return stripped.upper()

    candidates = tables.by_name.get(_normalise(stripped), ())
    shown = _shown(stripped)
    if accept_names and len(candidates) == 1:
        return candidates[0]
    if accept_names and candidates:
        raise CountryError(f"customer country {shown} is ambiguous ({_either(candidates)}); use the two-letter code")
    hint = f" (use {_either(candidates)})" if candidates else ""
    raise CountryError(f"customer country {shown} is not a two-letter ISO 3166 code{hint}")


class _Tables(NamedTuple):
    assigned: frozenset[str]  # every assigned alpha-2 code
    by_name: Mapping[str, tuple[str, ...]]  # normalised name or code -> candidate alpha-2 codes


@functools.cache
def _tables() -> _Tables:
    import iso3166  # here, not at module top: nothing is loaded until a country is mapped

    records = [r for r in iso3166.countries if r.alpha2 not in _NOT_ASSIGNED_BY_ISO]
    by_name: dict[str, dict[str, None]] = {}  # dict as an ordered set: candidates keep their order

    def add(name: str, code: str) -> None:
        by_name.setdefault(_normalise(name), {})[code] = None

    for record in records:
        for name in (record.alpha2, record.alpha3, *_iso_names(record.name, record.apolitical_name)):
            add(name, record.alpha2)
    for alias, code in _ALIASES.items():
        add(alias, code)
    for name, codes in _AMBIGUOUS.items():
        by_name[_normalise(name)] = dict.fromkeys(codes)  # replaces, so the documented order wins
    return _Tables(
        assigned=frozenset(r.alpha2 for r in records),
        by_name={key: tuple(codes) for key, codes in by_name.items()},
    )


def _iso_names(*names: str) -> Iterator[str]:
    """An ISO name and the ways people write it: without a parenthesised part ("Falkland Islands
    (Malvinas)"), and for ISO's inverted names ("Korea, Republic of") both the head ("Korea") and
    the natural order ("Republic of Korea"). Heads two countries share become ambiguous."""
    for name in names:
        yield name
        plain = re.sub(r"\s*\([^)]*\)", "", name)
        yield plain
        head, comma, tail = plain.partition(", ")
        if comma:
            yield head
            if re.search(r"\bof( the)?$", tail):
                yield f"{tail} {head}"


def _normalise(text: str) -> str:
    """The lookup key: upper case, accents dropped, "&" read as "and", dots and apostrophes dropped
    ("U.S.A." = "USA"), other punctuation read as spaces, "St" read as "Saint", no leading "The"."""
    decomposed = unicodedata.normalize("NFKD", text)
    letters = "".join(c for c in decomposed if not unicodedata.combining(c)).upper()
    letters = re.sub(r"[.'’`]", "", letters.replace("&", " AND "))
    words = re.sub(r"[\W_]+", " ", letters).split()
    if words[:1] == ["THE"]:
        words = words[1:]
    return " ".join("SAINT" if word == "ST" else word for word in words)


def _either(codes: tuple[str, ...]) -> str:
    return codes[0] if len(codes) == 1 else f"{', '.join(codes[:-1])} or {codes[-1]}"


def _shown(value: str) -> str:
    """The value as quoted in an error: one line, and short."""
    one_line = " ".join(value.split())
    if len(one_line) > _MAX_SHOWN:
        one_line = one_line[: _MAX_SHOWN - 1] + "…"
    return f"'{one_line}'"
