"""The backfill report: a table in the terminal, and the same rows as CSV or HTML.

One row per differing field of a pair, and one row per finding without fields, so a spreadsheet
filter on any column (category, field, action) answers "what would change".
"""

from __future__ import annotations

import csv
import datetime as dt
import html
from collections import Counter
from pathlib import Path
from typing import TextIO

from shared.backfill.compare import CATEGORIES, Comparison

COLUMNS = ("category", "referral", "crm_record", "name", "field", "partner_center_value", "crm_value", "action")
HEADINGS = {
    "category": "Category",
    "referral": "Referral",
    "crm_record": "CRM record",
    "name": "Name",
    "field": "Field",
    "partner_center_value": "Partner Center value",
    "crm_value": "CRM value",
    "action": "What the sync would do",
}
Row = dict[str, str]


def rows(comparison: Comparison) -> list[Row]:
    found: list[Row] = []
    for finding in comparison.findings:
        common = {
            "category": finding.category,
            "referral": finding.referral_id or "-",
            "crm_record": finding.crm_label,
            "name": finding.name or "",
        }
        found.append({**common, "field": "", "partner_center_value": "", "crm_value": "", "action": finding.action})
        for difference in finding.differences:
            found.append(
                {
                    **common,
                    "field": difference.label,
                    "partner_center_value": difference.pc_value,
                    "crm_value": difference.crm_value,
                    "action": difference.action,
                }
            )
    return found


def summary(comparison: Comparison) -> list[str]:
    counts = Counter(finding.category for finding in comparison.findings)
    lines = [
        f"Compared {comparison.referrals_read} referral(s) and {comparison.records_read} CRM record(s) "
        f"({comparison.scope.describe()}); {comparison.in_sync} linked pair(s) in sync.",
    ]
    lines += [f"  {category}: {counts[category]}" for category in CATEGORIES if counts[category]]
    lines.append(f"Syncs to queue: {len(comparison.to_queue)}")
    return lines


def print_table(comparison: Comparison, out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=200 if not out.isatty() else None, highlight=False)
    table = Table(show_lines=False, expand=False)
    for column in COLUMNS:
        ids = column in ("referral", "crm_record")  # whole, so they can be copied from the terminal
        table.add_column(HEADINGS[column], overflow="fold", no_wrap=ids)
    for row in rows(comparison):
        table.add_row(*(row[column] for column in COLUMNS), style="bold" if not row["field"] else None)
    if comparison.findings:
        console.print(table)
    for line in summary(comparison):
        console.print(line, markup=False)


def default_report_path(now: dt.datetime | None = None) -> Path:
    moment = now or dt.datetime.now(dt.UTC)
    return Path(f"backfill-report-{moment:%Y%m%d-%H%M%S}.csv")


def write_report(comparison: Comparison, path: Path, *, title: str) -> Path:
    """CSV or HTML by the file's suffix (`.csv`, `.html`/`.htm`)."""
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows(comparison))
        return path
    if suffix in (".html", ".htm"):
        path.write_text(_html(comparison, title), encoding="utf-8")
        return path
    raise ValueError(f"the report file must end in .csv or .html, not {path.name!r}")


def _html(comparison: Comparison, title: str) -> str:
    escape = html.escape
    head = "".join(f"<th>{escape(HEADINGS[column])}</th>" for column in COLUMNS)
    body = "".join(
        f'<tr class="{"finding" if not row["field"] else "field"}">'
        + "".join(f"<td>{escape(row[column])}</td>" for column in COLUMNS)
        + "</tr>"
        for row in rows(comparison)
    )
    lines = "".join(f"<li>{escape(line.strip())}</li>" for line in summary(comparison))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1rem}table{border-collapse:collapse;width:100%}"
        "th,td{border:1px solid #ccc;padding:.3rem;text-align:left;vertical-align:top}"
        "tr.finding td{font-weight:600;background:#f4f4f4}"
        f"</style></head><body><h1>{escape(title)}</h1><ul>{lines}</ul>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>\n"
    )
