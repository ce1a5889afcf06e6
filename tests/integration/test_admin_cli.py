"""`python -m shared` core commands: doctor, new-key, settings-reference, dead letters."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shared.admin.cli import main
from shared.settings import load_settings, reference_markdown
from shared.sync.queues import SYNC_QUEUE, CrmChange, QueueProducer, parse_sync_request
from shared.sync.state import Link, StateStore, link_id_for_crm, link_id_for_referral
from shared.sync.storage import StorageAccount

pytestmark = pytest.mark.azurite
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str, tmp_path: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--local-settings", str(tmp_path / "absent.json"), *argv], out=out)
    return code, out.getvalue()


def test_doctor_passes_with_valid_settings_and_reachable_storage(
    app_environment: dict[str, str], tmp_path: Path
) -> None:
    code, printed = run("doctor", tmp_path=tmp_path)
    assert code == 0, printed
    assert "✔ settings are valid" in printed and "✔ storage reachable" in printed
    assert app_environment["PC_CLIENT_SECRET"] not in printed
    assert "PC_CLIENT_SECRET" in printed and "********" in printed


def test_doctor_fails_and_names_each_bad_setting(
    app_environment: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CRM_KIND", "sap")
    monkeypatch.delenv("PC_CLIENT_ID")
    code, printed = run("doctor", "--offline", tmp_path=tmp_path)
    assert code == 1
    assert "CRM_KIND must be 'salesforce' or 'dynamics'" in printed
    assert "PC_CLIENT_ID is missing" in printed


def test_doctor_reads_local_settings_json_for_names_not_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, app_environment: dict[str, str]
) -> None:
    monkeypatch.delenv("CRM_KIND")
    settings_file = tmp_path / "local.settings.json"
    settings_file.write_text('{"Values": {"CRM_KIND": "dynamics"}}', encoding="utf-8")
    out = io.StringIO()
    code = main(["--local-settings", str(settings_file), "doctor", "--offline"], out=out)
    assert code == 1  # dynamics without its DATAVERSE_* settings: proves the file's value was used
    assert "DATAVERSE_URL is missing" in out.getvalue()


def test_new_key_prints_a_valid_token_cache_key(tmp_path: Path, app_environment: dict[str, str]) -> None:
    code, printed = run("new-key", tmp_path=tmp_path)
    key = printed.strip()
    assert code == 0 and len(base64.urlsafe_b64decode(key)) == 32
    assert load_settings({**app_environment, "PC_TOKEN_CACHE_KEY": key}).pc_token_cache_key.get_secret_value() == key


def test_settings_reference_is_the_generated_markdown(tmp_path: Path) -> None:
    assert run("settings-reference", tmp_path=tmp_path) == (0, reference_markdown())


def test_dead_letters_are_listed_and_replayed_onto_their_queue(
    app_environment: dict[str, str], storage: StorageAccount, empty_sync_queues: None, tmp_path: Path
) -> None:
    payload = CrmChange(object="opportunity", record_id="006REPLAY0001").model_dump_json()
    state = StateStore(storage)
    state.record_failure(SYNC_QUEUE, payload, "CrmTransientError: Salesforce is down", 5)
    letter = state.record_dead_letter(queue=SYNC_QUEUE, payload=payload, dequeue_count=1)

    code, listed = run("dead-letters", "list", "--limit", "5", tmp_path=tmp_path)
    assert code == 0 and letter.id in listed and "Salesforce is down" in listed

    code, replayed = run("dead-letters", "replay", letter.id, tmp_path=tmp_path)
    assert code == 0, replayed
    queue = storage.queue_client(SYNC_QUEUE)
    (message,) = list(queue.receive_messages(max_messages=1))
    assert parse_sync_request(str(message.content)) == CrmChange.model_validate_json(payload)
    assert QueueProducer(storage).depth(SYNC_QUEUE) == 1
    stored = state.get_dead_letter(letter.id)
    assert stored is not None and stored.replayed_at is not None
    assert run("dead-letters", "replay", "no-such-id", tmp_path=tmp_path)[0] == 1


def test_sync_status_lists_links_errors_and_one_links_audit(
    app_environment: dict[str, str], storage: StorageAccount, tmp_path: Path
) -> None:
    state = StateStore(storage)
    referral_id = f"cli-{uuid.uuid4()}"
    crm_id = f"006CLI{uuid.uuid4().hex[:8]}"
    state.create_link(
        Link(
            link_id=link_id_for_referral(referral_id), referral_id=referral_id, crm_object="opportunity", crm_id="006OK"
        )
    )
    state.create_link(
        Link(
            link_id=link_id_for_crm("opportunity", crm_id),
            crm_object="opportunity",
            crm_id=crm_id,
            state="error",
            last_error="Not sent to Partner Center: add at least one Microsoft Partner Center solution",
        )
    )
    state.append_audit(link_id_for_referral(referral_id), direction="pc->crm", outcome="synced", message="created it")

    code, listed = run("sync-status", "--limit", "1000", tmp_path=tmp_path)
    assert code == 0 and f"pc-{referral_id}" in listed and f"crm-opportunity-{crm_id}" in listed
    code, errors = run("sync-status", "--errors", "--limit", "1000", tmp_path=tmp_path)
    assert f"crm-opportunity-{crm_id}" in errors and f"pc-{referral_id}" not in errors
    assert "add at least one Microsoft Partner Center solution" in errors
    code, audit = run("sync-status", "--audit", referral_id, tmp_path=tmp_path)
    assert code == 0 and "pc->crm" in audit and "created it" in audit


def test_sync_now_queues_the_record(
    app_environment: dict[str, str], storage: StorageAccount, empty_sync_queues: None, tmp_path: Path
) -> None:
    code, said = run("sync-now", "lead", "00QNOW", tmp_path=tmp_path)
    assert code == 0, said
    (message,) = list(storage.queue_client(SYNC_QUEUE).receive_messages(max_messages=1))
    queued = parse_sync_request(str(message.content))
    assert isinstance(queued, CrmChange) and (queued.object, queued.record_id) == ("lead", "00QNOW")


def test_the_module_runs_as_a_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shared", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and "doctor" in result.stdout


def test_fields_reference_is_the_table_generated_from_the_field_registry(tmp_path: Path) -> None:
    from shared.mapping.fields import reference_table

    assert run("fields-reference", tmp_path=tmp_path) == (0, reference_table())
