"""The admin command line: `python -m shared <command>`.

Core commands live here; each integration adds its own command group (`partner-center`,
`salesforce`, `dynamics`) through a `register(subparsers)` function in its package.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from shared.settings import Settings, SettingsError, apply_local_settings_file, load_settings, reference_markdown

# Command groups contributed by the integrations: name -> module with `register(subparsers)`.
COMMAND_GROUPS: dict[str, str] = {
    "partner-center": "shared.partner_center.commands",
    "salesforce": "shared.crm.salesforce_commands",
    "dynamics": "shared.crm.dynamics_commands",
    "backfill": "shared.backfill.commands",
}

Handler = Callable[[argparse.Namespace, TextIO], int]


def _doctor(arguments: argparse.Namespace, out: TextIO) -> int:
    """Validate every setting, print them (secrets masked), and check storage."""
    try:
        settings = load_settings()
    except SettingsError as error:
        print("Settings are NOT valid:", file=out)
        for problem in error.problems:
            print(f"  ✖ {problem}", file=out)
        return 1
    width = max(len(name) for name, _, _ in settings.describe())
    for name, shown, origin in settings.describe():
        print(f"  {name.ljust(width)}  {shown}{'' if origin == 'set' else '  (default)'}", file=out)
    print("✔ settings are valid", file=out)
    if arguments.offline:
        return 0
    return 0 if _check_storage(settings, out) else 1


def _check_storage(settings: Settings, out: TextIO) -> bool:
    from shared.admin.health import check_health

    report = check_health(detailed=True, load_settings=lambda: settings)
    storage = report.details.get("storage", {})
    if storage.get("reachable"):
        print(
            f"✔ storage reachable; queues {report.details.get('queues')}; dead letters {report.details.get('dead_letters')}",
            file=out,
        )
        return True
    print(f"✖ storage not reachable: {storage.get('error')}", file=out)
    return False


def _new_key(arguments: argparse.Namespace, out: TextIO) -> int:
    """Print a new random key for PC_TOKEN_CACHE_KEY."""
    print(base64.urlsafe_b64encode(os.urandom(32)).decode(), file=out)
    return 0


def _settings_reference(arguments: argparse.Namespace, out: TextIO) -> int:
    """Print the configuration reference (Markdown) that the README embeds."""
    out.write(reference_markdown())
    return 0


def _fields_reference(arguments: argparse.Namespace, out: TextIO) -> int:
    """Print the table of synced fields (Markdown) that docs/sync.md embeds."""
    from shared.mapping.fields import reference_table

    out.write(reference_table())
    return 0


def _dead_letters(arguments: argparse.Namespace, out: TextIO) -> int:
    from shared import bootstrap

    state = bootstrap.state_store()
    if arguments.action == "list":
        letters = state.list_dead_letters(limit=arguments.limit)
        for letter in letters:
            replayed = f" (replayed {letter.replayed_at:%Y-%m-%d %H:%M})" if letter.replayed_at else ""
            print(
                f"{letter.id}  {letter.time:%Y-%m-%d %H:%M:%S}  {letter.queue}  x{letter.dequeue_count}{replayed}",
                file=out,
            )
            print(f"    reason:  {letter.reason}", file=out)
            print(f"    payload: {letter.payload}", file=out)
        if not letters:
            print("no dead letters", file=out)
        return 0
    from shared.sync.failures import ReplayError, replay_dead_letter

    try:
        found = replay_dead_letter(state, bootstrap.queue_producer(), arguments.id)
    except ReplayError as error:
        print(str(error), file=out)
        return 1
    print(f"replayed {found.id} onto {found.queue}", file=out)
    return 0


def _sync_status(arguments: argparse.Namespace, out: TextIO) -> int:
    """Every link (or those in error), or one link's audit trail, newest first."""
    from shared import bootstrap
    from shared.sync.state import link_id_for_referral

    state = bootstrap.state_store()
    if arguments.audit:
        link_id = (
            arguments.audit if arguments.audit.startswith(("pc-", "crm-")) else link_id_for_referral(arguments.audit)
        )
        entries = state.list_audit(link_id, limit=arguments.limit)
        for entry in entries:
            print(
                f"{entry.time:%Y-%m-%d %H:%M:%S}  {entry.direction:<7}  {entry.outcome:<8}  {entry.message}", file=out
            )
        if not entries:
            print(f"no audit entries for {link_id}", file=out)
        return 0
    shown = 0
    for link in state.list_links():
        if arguments.errors and not link.last_error:
            continue
        synced = f"{link.last_synced_at:%Y-%m-%d %H:%M:%S}" if link.last_synced_at else "never"
        crm = f"{link.crm_object} {link.crm_id}" if link.crm_id else "-"
        print(
            f"{link.link_id}  {link.state:<8}  referral {link.referral_id or '-'}  {crm}  last synced {synced}",
            file=out,
        )
        if link.last_error:
            print(f"    error: {link.last_error}", file=out)
        shown += 1
        if shown >= arguments.limit:
            break
    if not shown:
        print("no links yet" if not arguments.errors else "no links in error", file=out)
    return 0


def _sync_now(arguments: argparse.Namespace, out: TextIO) -> int:
    """Queue one referral or CRM record for a sync now (after fixing data, or to retry by hand)."""
    from shared import bootstrap
    from shared.sync.queues import CrmChange, PartnerCenterChange

    message: PartnerCenterChange | CrmChange
    if arguments.kind == "referral":
        message = PartnerCenterChange(referral_id=arguments.id, event="manual")
    else:
        message = CrmChange(object=arguments.kind, record_id=arguments.id)
    bootstrap.queue_producer().send(message)
    print(f"queued a sync of {arguments.kind} {arguments.id}", file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared", description="Co-sell Sync admin commands.")
    parser.add_argument(
        "--local-settings",
        type=Path,
        default=Path("local.settings.json"),
        help="read app settings not set in the environment from this file, as `func start` does "
        "(default: ./local.settings.json when it exists)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = commands.add_parser("doctor", help="check every setting (secrets masked) and storage; exit 1 when invalid")
    doctor.add_argument("--offline", action="store_true", help="only validate settings, do not contact storage")
    doctor.set_defaults(handler=_doctor)

    commands.add_parser("new-key", help="print a new random PC_TOKEN_CACHE_KEY").set_defaults(handler=_new_key)
    commands.add_parser("settings-reference", help="print the configuration reference (Markdown)").set_defaults(
        handler=_settings_reference
    )
    commands.add_parser("fields-reference", help="print the table of synced fields (Markdown)").set_defaults(
        handler=_fields_reference
    )

    dead = commands.add_parser("dead-letters", help="list or replay messages that exhausted their retries")
    dead_actions = dead.add_subparsers(dest="action", required=True)
    listing = dead_actions.add_parser("list", help="newest first")
    listing.add_argument("--limit", type=int, default=20)
    replay = dead_actions.add_parser("replay", help="put a dead letter back on its queue")
    replay.add_argument("id")
    dead.set_defaults(handler=_dead_letters)

    status = commands.add_parser("sync-status", help="list links (referral <-> CRM record) or one link's audit")
    status.add_argument("--errors", action="store_true", help="only links whose last sync failed")
    status.add_argument("--audit", metavar="REFERRAL_OR_LINK_ID", help="show the sync audit of one link, newest first")
    status.add_argument("--limit", type=int, default=50)
    status.set_defaults(handler=_sync_status)

    now = commands.add_parser("sync-now", help="queue a sync of one referral or CRM record")
    now.add_argument("kind", choices=["referral", "opportunity", "lead"])
    now.add_argument("id")
    now.set_defaults(handler=_sync_now)

    for module_name in COMMAND_GROUPS.values():
        importlib.import_module(module_name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    stream = out or sys.stdout
    arguments = build_parser().parse_args(argv)
    handler: Any = arguments.handler
    try:
        if apply_local_settings_file(arguments.local_settings):
            print(f"(app settings read from {arguments.local_settings})", file=sys.stderr)
        return int(handler(arguments, stream))
    except SettingsError as error:
        print(str(error), file=stream)
        return 1
