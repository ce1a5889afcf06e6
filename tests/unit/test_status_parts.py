"""Pure parts of the status page and alerts: links to both systems, payload subjects, slow schedules."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.admin import alerts, status
from shared.settings import Settings, SettingsError, load_settings
from shared.sync import runs
from shared.sync.state import JobRun
from tests.conftest import base_environment

CONNECTION = "UseDevelopmentStorage=true"


def settings_for(crm: str, **overrides: str) -> Settings:
    extra = (
        {
            "DATAVERSE_URL": "https://contoso.crm4.dynamics.com",
            "DATAVERSE_TENANT_ID": "t",
            "DATAVERSE_CLIENT_ID": "c",
            "DATAVERSE_CLIENT_SECRET": "s",
        }
        if crm == "dynamics"
        else {}
    )
    return load_settings(base_environment(CONNECTION, CRM_KIND=crm, **extra, **overrides))


def test_crm_record_links_open_the_record_in_each_crm() -> None:
    salesforce = status.crm_record_url(settings_for("salesforce"), "opportunity", "006AB000001x2yZ")
    assert salesforce == "https://login.salesforce.com/?startURL=%2F006AB000001x2yZ"
    dynamics = status.crm_record_url(settings_for("dynamics"), "lead", "6f1c2a3b-0000-0000-0000-000000000001")
    assert dynamics == (
        "https://contoso.crm4.dynamics.com/main.aspx?pagetype=entityrecord&etn=lead"
        "&id=6f1c2a3b-0000-0000-0000-000000000001"
    )
    assert status.crm_record_url(settings_for("salesforce"), None, None) is None


def test_referral_links_follow_the_template() -> None:
    settings = settings_for("salesforce", PC_REFERRAL_LINK_TEMPLATE="https://partner.example/r/{engagement_id}/{id}")
    assert status.referral_url(settings, "ref-1", "eng-9") == "https://partner.example/r/eng-9/ref-1"
    assert status.referral_url(settings, None) is None


def test_a_dead_letter_names_what_it_was_about() -> None:
    assert status.describe_payload('{"source":"crm","object":"lead","record_id":"00Q1"}') == "CRM lead 00Q1"
    assert status.describe_payload('{"referral_id":"r1","event":"referral-updated"}') == (
        "Partner Center referral r1 (referral-updated)"
    )
    assert status.describe_payload("not json") == "a message that is not JSON"
    assert status.describe_payload("[1]") == "a message that is not a JSON object"


def _snapshot(now: dt.datetime, job: str, healthy_at: dt.datetime) -> status.StatusSnapshot:
    run = JobRun(name=job, last_run_at=healthy_at, succeeded=True, last_success_at=healthy_at)
    return status.StatusSnapshot(
        generated_at=now,
        crm_kind="salesforce",
        pc_sign_in={"signed_in": True, "mfa": True, "healthy": True},
        crm_error=None,
        connections=[
            status.Connection("Partner Center sign-in", True, [("MFA", "yes")]),
            status.Connection("CRM (salesforce)", True, []),
        ],
        jobs=status.Part(value=[status.JobStatus(job, job, run)]),
        queues=status.Part(value={}),
        outcomes_hour=status.Part(value={}),
        outcomes_day=status.Part(value={}),
        errors=status.Part(value=[]),
        dead_letters=status.Part(value=[]),
        waiting=status.Part(value=[]),
    )


def test_a_slow_schedule_is_not_late_before_two_of_its_intervals() -> None:
    now = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
    settings = settings_for("salesforce", ALERT_NO_POLL_MINUTES="15")  # reconcile runs every 15 minutes
    on_time = alerts.evaluate(_snapshot(now, runs.PC_RECONCILE, now - dt.timedelta(minutes=25)), settings)
    assert on_time == []
    late = alerts.evaluate(_snapshot(now, runs.PC_RECONCILE, now - dt.timedelta(minutes=31)), settings)
    assert [alert.kind for alert in late] == ["no_poll"]
    assert late[0].title == "The Partner Center reconcile poll has not succeeded for 31 min"
    crm_late = alerts.evaluate(_snapshot(now, runs.CRM_POLL, now - dt.timedelta(minutes=16)), settings)
    assert [alert.cause for alert in crm_late] == [f"no-poll:{runs.CRM_POLL}"]


def test_the_waiting_referrals_are_read_at_most_once_a_minute_and_a_failure_is_not_kept() -> None:
    moments = [dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)]
    loads: list[int] = []

    def load() -> int:
        loads.append(1)
        if len(loads) == 3:
            raise RuntimeError("Partner Center is down")
        return len(loads)

    recent = status.RecentValue(load, dt.timedelta(seconds=60), clock=lambda: moments[-1])
    assert recent.get() == 1
    moments.append(moments[-1] + dt.timedelta(seconds=59))
    assert recent.get() == 1 and len(loads) == 1
    moments.append(moments[-1] + dt.timedelta(seconds=2))
    assert recent.get() == 2
    moments.append(moments[-1] + dt.timedelta(seconds=61))
    with pytest.raises(RuntimeError, match="Partner Center is down"):
        recent.get()
    assert recent.get() == 4  # the failed load was not kept


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (
            {"STATUS_PAGE_REFRESH_SECONDS": "2"},
            "STATUS_PAGE_REFRESH_SECONDS must be a number of seconds between 5 and 3600",
        ),
        ({"ALERT_DIGEST_HOUR": "24"}, "ALERT_DIGEST_HOUR must be an hour of the day between 0 and 23"),
        ({"ALERT_EXPIRY_DAYS": "-1"}, "ALERT_EXPIRY_DAYS must be zero or a positive whole number"),
        ({"ALERT_SCHEDULE": "every 5 minutes"}, "ALERT_SCHEDULE is not a valid six-field NCRONTAB expression"),
        ({"ALERT_SLACK_WEBHOOK_URL": "http://hooks.slack.example/x"}, "ALERT_SLACK_WEBHOOK_URL is not an https URL"),
        (
            {"ALERT_SMTP_HOST": "smtp.contoso.com"},
            "ALERT_EMAIL_FROM is missing: it is required when ALERT_SMTP_HOST is set",
        ),
        (
            {
                "ALERT_SMTP_HOST": "smtp.contoso.com",
                "ALERT_SMTP_SECURITY": "none",
                "ALERT_EMAIL_FROM": "a@contoso.com",
                "ALERT_EMAIL_TO": "b@contoso.com",
            },
            "ALERT_SMTP_SECURITY is 'none' for a server that is not on this machine",
        ),
        ({"STATUS_PAGE_URL": "status page"}, "STATUS_PAGE_URL is not a URL"),
    ],
)
def test_bad_status_and_alert_settings_are_named_in_plain_words(overrides: dict[str, str], problem: str) -> None:
    with pytest.raises(SettingsError) as refused:
        settings_for("salesforce", **overrides)
    assert any(line.startswith(problem) for line in refused.value.problems), refused.value.problems
