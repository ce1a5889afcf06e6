"""`python -m shared backfill`: compare Partner Center with the CRM (dry run), then queue the syncs."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import TextIO

from shared.backfill.compare import Comparison, Scope, UnknownIdsError, compare
from shared.backfill.report import default_report_path, print_table, write_report
from shared.backfill.run import BackfillRun, BackfillStore, PlannedSync, RateLimiter, plan_of, queue_plan
from shared.crm.port import CrmRef

EXIT_INTERRUPTED = 130


def parse_since(text: str) -> dt.datetime:
    """`2026-11-01` (midnight UTC) or an ISO time (`2026-11-01T08:00`, UTC unless it says otherwise)."""
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date; use YYYY-MM-DD or an ISO time like 2026-11-01T08:00"
        ) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    if moment > dt.datetime.now(dt.UTC):
        raise argparse.ArgumentTypeError(f"{text!r} is in the future")
    return moment.astimezone(dt.UTC)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "backfill",
        help="compare Partner Center with the CRM and report what differs (--dry-run), or queue those syncs (--apply)",
        description="Compare every referral with its CRM record (or only those changed since a date, or only "
        "the ids named) and say what a sync would do. --dry-run writes nothing anywhere; --apply queues "
        "exactly the syncs the report lists, at BACKFILL_SYNCS_PER_MINUTE, and resumes an interrupted run.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--dry-run", action="store_true", help="report only; no write to Partner Center, the CRM or storage"
    )
    mode.add_argument(
        "--apply", action="store_true", help="queue the syncs the report lists (resumes an unfinished run)"
    )
    parser.add_argument(
        "--since", type=parse_since, metavar="DATE", help="only referrals and records changed since then"
    )
    parser.add_argument("--referral", action="append", default=[], metavar="ID", help="only this referral (repeatable)")
    parser.add_argument(
        "--opportunity", action="append", default=[], metavar="ID", help="only this CRM opportunity (repeatable)"
    )
    parser.add_argument("--lead", action="append", default=[], metavar="ID", help="only this CRM lead (repeatable)")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="write the report here: .csv or .html (default: ./backfill-report-<UTC time>.csv)",
    )
    parser.add_argument(
        "--abandon-unfinished",
        action="store_true",
        help="with --apply: drop an interrupted run instead of resuming it, and start anew",
    )
    parser.set_defaults(handler=_backfill)


def _scope(arguments: argparse.Namespace) -> Scope:
    refs = tuple(
        [CrmRef(kind="opportunity", id=item.strip()) for item in arguments.opportunity]
        + [CrmRef(kind="lead", id=item.strip()) for item in arguments.lead]
    )
    return Scope(since=arguments.since, referral_ids=tuple(item.strip() for item in arguments.referral), crm_refs=refs)


def _option_problem(arguments: argparse.Namespace, scope: Scope, report_path: Path) -> str | None:
    if scope.since and scope.named:
        return "--since cannot be combined with --referral / --opportunity / --lead: name ids, or a date, not both"
    if any(not item for item in scope.referral_ids) or any(not ref.id for ref in scope.crm_refs):
        return "an id given with --referral / --opportunity / --lead is empty"
    if report_path.suffix.lower() not in (".csv", ".html", ".htm"):
        return f"--report must name a .csv or .html file, not {report_path.name!r}"
    if arguments.abandon_unfinished and not arguments.apply:
        return "--abandon-unfinished goes with --apply"
    return None


def _backfill(arguments: argparse.Namespace, out: TextIO) -> int:
    scope = _scope(arguments)
    report_path = arguments.report or default_report_path()
    problem = _option_problem(arguments, scope, report_path)
    if problem:
        print(problem, file=out)
        return 2

    from shared import bootstrap

    if arguments.apply:
        store = BackfillStore(bootstrap.storage())
        unfinished = store.unfinished()
        if unfinished is not None:
            if arguments.abandon_unfinished:
                store.close_run(unfinished, abandoned=True)
                print(f"abandoned the unfinished backfill {unfinished.run_id}", file=out)
            elif unfinished.scope != scope:
                print(
                    f"an unfinished backfill ({unfinished.run_id}, {unfinished.scope.describe()}) was started with other "
                    "options: run `backfill --apply` with the same options to resume it, or add --abandon-unfinished "
                    "to drop it. Nothing was queued.",
                    file=out,
                )
                return 1
            else:
                return _queue(store, unfinished, out, resumed=True)

    comparison = _compare(scope, out)
    if comparison is None:
        return 1
    print_table(comparison, out)
    title = f"Co-sell Sync backfill {'plan' if arguments.apply else 'dry run'}: {scope.describe()}"
    written = write_report(comparison, report_path, title=title)
    print(f"report written to {written}", file=out)
    if not arguments.apply:
        print(
            "dry run: nothing was written to Partner Center, the CRM or storage. "
            f"`backfill --apply` with the same options queues the {len(comparison.to_queue)} sync(s) above.",
            file=out,
        )
        return 0
    planned = plan_of(comparison)
    if not planned:
        print("nothing to queue", file=out)
        return 0
    run = store.create(scope, planned)
    return _queue(store, run, out, resumed=False)


def _compare(scope: Scope, out: TextIO) -> Comparison | None:
    from shared import bootstrap

    try:
        return compare(
            bootstrap.settings(),
            bootstrap.partner_center(),
            bootstrap.crm(),
            bootstrap.state_store(),
            scope,
            progress=lambda text: print(f"... {text}", file=out),
        )
    except UnknownIdsError as error:
        for problem in error.problems:
            print(f"✖ {problem}", file=out)
        print("Nothing was compared or queued; check the ids.", file=out)
        return None


def _queue(store: BackfillStore, run: BackfillRun, out: TextIO, *, resumed: bool) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from shared import bootstrap

    per_minute = bootstrap.settings().backfill_syncs_per_minute
    plan = store.plan(run.run_id)
    already = sum(1 for item in plan if item.queued_at is not None)
    if resumed:
        print(
            f"resuming backfill {run.run_id} ({run.scope.describe()}): {already} of {run.total} already queued",
            file=out,
        )
    print(f"queueing {run.total - already} sync(s) at {per_minute} a minute (BACKFILL_SYNCS_PER_MINUTE)", file=out)
    sent: list[PlannedSync] = []
    console = Console(file=out, highlight=False)
    columns = (TextColumn("queueing syncs"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("backfill", total=run.total, completed=already)

            def queued(item: PlannedSync) -> None:
                sent.append(item)
                progress.advance(task)

            queue_plan(store, run, bootstrap.queue_producer(), RateLimiter(per_minute), on_queued=queued)
    except KeyboardInterrupt:
        print(
            f"interrupted: {already + len(sent)} of {run.total} queued. Run `backfill --apply` with the same options "
            "to queue the rest.",
            file=out,
        )
        return EXIT_INTERRUPTED
    for item in sent:
        print(f"  queued {item.label}", file=out)
    print(
        f"✔ backfill {run.run_id}: queued {len(sent)} sync(s) now, {run.total} in all; the worker syncs them", file=out
    )
    return 0
