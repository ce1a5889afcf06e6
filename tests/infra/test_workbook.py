"""The Application Insights workbook queries the span names and attributes the code emits, and is deployed."""

from __future__ import annotations

import re
from pathlib import Path

from shared import telemetry

ROOT = Path(__file__).resolve().parents[2]
WORKBOOK = ROOT / "infra" / "app" / "workbook.bicep"
MAIN = ROOT / "infra" / "main.bicep"
SOURCES = [ROOT / "shared" / "sync" / "worker.py", ROOT / "shared" / "sync" / "failures.py"]


def test_every_attribute_the_workbook_reads_is_one_the_code_writes() -> None:
    text = WORKBOOK.read_text(encoding="utf-8")
    read = set(re.findall(r"cosell\.[a-z_]+", text))
    written = {value for name, value in vars(telemetry).items() if name.isupper() and str(value).startswith("cosell.")}
    assert read, "the workbook reads no cosell.* attribute"
    assert read <= written, f"attributes the code never writes: {sorted(read - written)}"
    values = set(re.findall(r'"([a-z_]+)"', text))  # quoted single words: the outcomes it filters on
    assert values and values <= set(telemetry.OUTCOMES), (
        f"outcomes the code never writes: {values - set(telemetry.OUTCOMES)}"
    )


def test_the_workbook_queries_the_span_names_the_worker_starts() -> None:
    text = WORKBOOK.read_text(encoding="utf-8")
    code = "\n".join(path.read_text(encoding="utf-8") for path in SOURCES)
    assert 'f"sync {request.source}"' in code and '("sync pc", "sync crm")' in text
    assert 'f"dead letter {queue}"' in code and '"dead letter sync"' in text
    for title in ("Syncs by outcome", "Latency percentiles", "Errors by reason", "Dead letters"):
        assert title in text


def test_main_deploys_the_workbook_on_the_application_insights_component() -> None:
    main = MAIN.read_text(encoding="utf-8")
    assert re.search(r"module workbook 'app/workbook\.bicep' = \{", main)
    assert "applicationInsightsId: monitoring.outputs.resourceId" in main
