"""Microsoft's co-sell taxonomy (Solution Area, Solution Play, Partner Role) as data.

The values live in `shared/partner_center/taxonomy/fyNN.json`, one file per fiscal year, never in code: the
newest file is current; a value an older file has and the newest lacks, or that the newest lists
under `retired`, is retired (kept readable on old CRM records, never sent to Partner Center). This
module loads and validates those files once; provisioning builds the CRM picklists from
`picklist()` and the field registry checks values with `problems()`.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

TAXONOMY_DIR = Path(__file__).resolve().parents[1] / "partner_center" / "taxonomy"
_FILE_NAME = re.compile(r"^fy(\d{2})\.json$")

Kind = Literal["solution_area", "solution_play", "partner_role"]
WORDS: dict[Kind, str] = {
    "solution_area": "Solution Area",
    "solution_play": "Solution Play",
    "partner_role": "Partner Role",
}


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SolutionArea(_Data):
    name: str = Field(min_length=1)
    plays: tuple[str, ...] = Field(min_length=1)


class Retired(_Data):
    solution_areas: tuple[str, ...] = ()
    solution_plays: tuple[str, ...] = ()
    partner_roles: tuple[str, ...] = ()


class TaxonomyFile(_Data):
    fiscal_year: str = Field(pattern=r"^FY\d{2}$")
    effective_from: str
    note: list[str] | str = ""
    solution_areas: tuple[SolutionArea, ...] = Field(min_length=1)
    partner_roles: tuple[str, ...] = Field(min_length=1)
    retired: Retired = Field(default_factory=Retired)

    @field_validator("solution_areas")
    @classmethod
    def _unique_names(cls, areas: tuple[SolutionArea, ...]) -> tuple[SolutionArea, ...]:
        names = [area.name for area in areas]
        plays = [play for area in areas for play in area.plays]
        for label, values in (("solution area", names), ("solution play", plays)):
            repeated = sorted({value for value in values if values.count(value) > 1})
            if repeated:
                raise ValueError(f"{label} {', '.join(repeated)} is listed more than once")
        return areas

    def values(self, kind: Kind) -> tuple[str, ...]:
        if kind == "solution_area":
            return tuple(area.name for area in self.solution_areas)
        if kind == "solution_play":
            return tuple(play for area in self.solution_areas for play in area.plays)
        return self.partner_roles

    def listed_retired(self, kind: Kind) -> tuple[str, ...]:
        return {
            "solution_area": self.retired.solution_areas,
            "solution_play": self.retired.solution_plays,
            "partner_role": self.retired.partner_roles,
        }[kind]


class Taxonomy:
    """The current fiscal year's values and every retired one."""

    def __init__(self, files: list[TaxonomyFile]) -> None:
        self.current = files[-1]
        self._retired: dict[Kind, tuple[str, ...]] = {}
        self._history: dict[Kind, tuple[str, ...]] = {}
        for kind in WORDS:
            self._history[kind] = tuple(
                dict.fromkeys(value for item in files for value in (*item.listed_retired(kind), *item.values(kind)))
            )
            active = set(self.current.values(kind))
            older = [value for item in files[:-1] for value in item.values(kind)]
            listed = [*self.current.listed_retired(kind), *older]
            self._retired[kind] = tuple(dict.fromkeys(value for value in listed if value not in active))

    @property
    def fiscal_year(self) -> str:
        return self.current.fiscal_year

    def picklist(self, kind: Kind) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(active values in the file's order, retired values) of one CRM picklist."""
        return self.current.values(kind), self._retired[kind]

    def history(self, kind: Kind) -> tuple[str, ...]:
        """Every value any file lists, in order of first appearance (oldest file first): what keeps
        a CRM's numeric option values stable when a new fiscal year adds values."""
        return self._history[kind]

    def area_of(self, play: str) -> str | None:
        return next((area.name for area in self.current.solution_areas if play in area.plays), None)

    def problems(self, kind: Kind, value: str | None) -> list[str]:
        """What is wrong with a value a seller chose, in words they can act on (empty: fine)."""
        word = WORDS[kind]
        active, retired = self.picklist(kind)
        if not value:
            return [f"choose the {word} (Microsoft requires it on a co-sell referral, {self.fiscal_year} values)"]
        if value in active:
            return []
        if value in retired:
            return [
                f"the {word} '{value}' was retired by Microsoft in {self.fiscal_year}; "
                f"choose a current one ({', '.join(active)})"
            ]
        return [f"'{value}' is not a {self.fiscal_year} {word} (choose one of {', '.join(active)})"]

    def play_problems(self, area: str | None, play: str | None) -> list[str]:
        """A play must belong to the chosen area (both current; other problems are reported per field)."""
        owner = self.area_of(play) if play else None
        if area and owner and owner != area:
            return [f"the Solution Play '{play}' belongs to the Solution Area '{owner}', not '{area}'"]
        return []


def load(directory: Path = TAXONOMY_DIR) -> Taxonomy:
    """Every `fyNN.json` in `directory`, oldest first; raises ValueError naming the file and the problem."""
    paths = sorted(
        (path for path in directory.glob("fy*.json") if _FILE_NAME.match(path.name)),
        key=lambda path: int(_FILE_NAME.match(path.name).group(1)),  # type: ignore[union-attr]
    )
    if not paths:
        raise ValueError(f"no co-sell taxonomy file (fyNN.json) in {directory}")
    files: list[TaxonomyFile] = []
    for path in paths:
        try:
            files.append(TaxonomyFile.model_validate(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, ValidationError) as error:
            raise ValueError(f"co-sell taxonomy {path}: {error}") from error
        expected = "FY" + _FILE_NAME.match(path.name).group(1)  # type: ignore[union-attr]
        if files[-1].fiscal_year != expected:
            raise ValueError(f"co-sell taxonomy {path}: says {files[-1].fiscal_year}, its name says {expected}")
    return Taxonomy(files)


@functools.cache
def taxonomy() -> Taxonomy:
    """The shipped taxonomy, loaded once per process."""
    return load()
