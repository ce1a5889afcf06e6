"""FY26 co-sell fields (Solution Area / Play, Partner Role from shared/partner_center/taxonomy) and the
customer's marketplace intent: the taxonomy as data, the checks before any Partner Center call,
and each field's direction through the engine with the in-memory fakes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shared.mapping import taxonomy as taxonomy_module
from shared.mapping.rules import partner_center_problems
from shared.mapping.taxonomy import TAXONOMY_DIR, load, taxonomy
from tests.fakes.world import World, incoming

COSELL = {
    "help_needed": "ProofOfConceptOrDemo",
    "solution_area": "Security",
    "solution_play": "Data Security",
    "partner_role": "Advisory",
}


def next_fiscal_year(directory: Path) -> Path:
    """A next fiscal year's file: one area renamed, one play added, one role dropped."""
    shutil.copy(TAXONOMY_DIR / "fy26.json", directory / "fy26.json")
    data = json.loads((TAXONOMY_DIR / "fy26.json").read_text(encoding="utf-8"))
    data.update(fiscal_year="FY27", effective_from="2026-07-01", retired={})
    data["solution_areas"][2] = {"name": "Security and Identity", "plays": ["Data Security", "Identity First"]}
    data["partner_roles"] = ["Advisory", "Implementation", "Managed Services"]
    (directory / "fy27.json").write_text(json.dumps(data), encoding="utf-8")
    return directory


def test_the_shipped_taxonomy_is_fy26_with_the_fy25_areas_retired() -> None:
    current = taxonomy()
    assert current.fiscal_year == "FY26"
    active, retired = current.picklist("solution_area")
    assert active == ("AI Business Solutions", "Cloud and AI Platforms", "Security")
    assert "Modern Work" in retired and "Security" not in retired
    assert current.area_of("Data Security") == "Security"


def test_a_newer_file_supersedes_and_retires_what_it_drops(tmp_path: Path) -> None:
    loaded = load(next_fiscal_year(tmp_path))
    assert loaded.fiscal_year == "FY27"
    areas, retired_areas = loaded.picklist("solution_area")
    assert "Security and Identity" in areas and "Security" in retired_areas
    assert "Modern Work" not in retired_areas  # only the newest file's own retired list, plus older files
    assert loaded.picklist("partner_role") == (("Advisory", "Implementation", "Managed Services"), ("Licensing",))
    assert loaded.problems("partner_role", "Licensing") == [
        "the Partner Role 'Licensing' was retired by Microsoft in FY27; choose a current one "
        "(Advisory, Implementation, Managed Services)"
    ]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"fiscal_year": "FY25"}, "says FY25, its name says FY26"),
        ({"partner_roles": []}, "partner_roles"),
        ({"solution_areas": [{"name": "A", "plays": ["P"]}, {"name": "A", "plays": ["Q"]}]}, "solution area A"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_a_bad_taxonomy_file_is_named_with_its_problem(tmp_path: Path, change: dict[str, object], error: str) -> None:
    data = json.loads((TAXONOMY_DIR / "fy26.json").read_text(encoding="utf-8")) | change
    (tmp_path / "fy26.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="fy26.json") as raised:
        load(tmp_path)
    assert error in str(raised.value)


def test_no_taxonomy_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no co-sell taxonomy file"):
        taxonomy_module.load(tmp_path)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            {"solution_area": None},
            "choose the Solution Area (Microsoft requires it on a co-sell referral, FY26 values)",
        ),
        ({"partner_role": ""}, "choose the Partner Role"),
        ({"solution_area": "Modern Work"}, "the Solution Area 'Modern Work' was retired by Microsoft in FY26"),
        ({"solution_play": "Copilot and Modern Work"}, "the Solution Play 'Copilot and Modern Work' was retired"),
        ({"solution_play": "Made up"}, "'Made up' is not a FY26 Solution Play"),
        ({"solution_play": "Unify your Data Platform"}, "belongs to the Solution Area 'Cloud and AI Platforms'"),
    ],
)
def test_a_new_cosell_names_a_missing_or_retired_value_in_plain_words(change: dict[str, object], problem: str) -> None:
    problems = partner_center_problems({**COSELL, **change}, accept_country_names=False, creating=True)
    assert any(problem in item for item in problems), problems


def test_the_taxonomy_is_checked_only_when_creating_a_cosell() -> None:
    missing = {**COSELL, "solution_area": None, "solution_play": None, "partner_role": None}
    assert partner_center_problems(missing, accept_country_names=False) == []  # an update: Partner Center keeps them
    private = {**missing, "help_needed": None}
    assert partner_center_problems(private, accept_country_names=False, creating=True) == []
    assert partner_center_problems(COSELL, accept_country_names=False, creating=True) == []


def test_marketplace_intent_must_be_one_partner_center_knows() -> None:
    problems = partner_center_problems({"marketplace_intent": "Maybe"}, accept_country_names=False)
    assert problems == ["'Maybe' is not a customer marketplace intent (choose one of HaveNotDecided, Yes, No)"]


# ---- through the engine (CRM -> Partner Center on create; Partner Center -> CRM for incoming) ----------
def test_a_new_cosell_carries_the_fy26_fields_and_the_sellers_marketplace_intent() -> None:
    world = World.build()
    ref = world.seller_deal(marketplace_intent="Yes")
    world.engine.sync_crm_record(ref)
    (posted,) = world.pc.posts
    assert (posted["solutionArea"], posted["solutionPlay"], posted["partnerRole"]) == (
        "Cloud and AI Platforms",
        "Migrate and Modernize your Estate",
        "Implementation",
    )
    attributes = posted["details"]["requirements"]["additionalRequirements"]["attributes"]
    assert attributes == [{"id": "Yes", "type": "CustomerMarketplaceIntent"}]


def test_without_a_sellers_answer_the_marketplace_intent_is_have_not_decided() -> None:
    world = World.build()
    ref = world.seller_deal()
    world.engine.sync_crm_record(ref)
    (posted,) = world.pc.posts
    attributes = posted["details"]["requirements"]["additionalRequirements"]["attributes"]
    assert attributes == [{"id": "HaveNotDecided", "type": "CustomerMarketplaceIntent"}]


def test_a_cosell_with_a_retired_area_is_not_sent_and_the_seller_reads_why() -> None:
    world = World.build()
    ref = world.seller_deal(solution_area="Modern Work")
    world.engine.sync_crm_record(ref)
    assert world.pc.posts == []
    record = world.crm.read(ref)
    assert record.connector.sync_status == "Error"
    assert "the Solution Area 'Modern Work' was retired by Microsoft in FY26" in record.connector.audit
    world.seller_edits(ref, solution_area="Cloud and AI Platforms")
    assert len(world.pc.posts) == 1


def test_a_private_deal_needs_no_taxonomy_values() -> None:
    world = World.build()
    ref = world.seller_deal(help_needed=None, solution_area=None, solution_play=None, partner_role=None)
    world.engine.sync_crm_record(ref)
    (posted,) = world.pc.posts
    assert "solutionArea" not in posted


def test_an_incoming_referral_shows_its_fy26_fields_and_intent_on_the_crm_record() -> None:
    world = World.build()
    document = incoming(solutionArea="Security", partnerRole="Advisory")
    requirements = document.setdefault("details", {}).setdefault("requirements", {})
    requirements["additionalRequirements"] = {
        "attributes": [
            {"id": "Data Security", "type": "SolutionPlay"},  # the other plausible form (contract.json)
            {"id": "No", "type": "CustomerMarketplaceIntent"},
        ]
    }
    _, ref = world.referral_synced(document)
    connector = world.crm.read(ref).connector
    assert (connector.solution_area, connector.solution_play, connector.partner_role) == (
        "Security",
        "Data Security",
        "Advisory",
    )
    assert connector.marketplace_intent == "No"


def test_the_taxonomy_ships_with_the_function_app() -> None:
    """The sync checks values at run time, so the files live in the package, not in crm_schema/
    (which .funcignore leaves out of the deployment)."""
    root = Path(__file__).resolve().parents[2]
    relative = TAXONOMY_DIR.relative_to(root)
    assert relative.parts[0] == "shared" and (TAXONOMY_DIR / "fy26.json").is_file()
    ignored = [line.strip() for line in (root / ".funcignore").read_text(encoding="utf-8").splitlines()]
    assert not any(part in ignored for part in relative.parts)
