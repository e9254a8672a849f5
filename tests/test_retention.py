"""Retention against SQLite and PostgreSQL: a dry run reports and changes nothing, a real
run removes exactly the rows older than the cut (whole partitions dropped, the rest
deleted in batches) and keeps the rest; partitions are made ahead, with a DEFAULT."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select, text

from beat_schedule import beat_schedule
from cli import main
from polling import partitions, retention
from polling.durations import parse_period
from polling.errors import ConfigError
from polling.models import AlertRow, DiagnosticRun, GatewayRow, PollLog, Reading
from polling.settings import Settings
from workers.queues import CLEANUP_TASK, SCHEDULING

NOW = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
resolved = AlertRow.state == "resolved"
#: Ages of the rows each test writes; the cut is 10 days.
AGES = [
    timedelta(hours=1),
    timedelta(days=3),
    timedelta(days=9, hours=23),
    timedelta(days=10, minutes=1),
    timedelta(days=10, hours=5),
    timedelta(days=12),
    timedelta(days=15),
    timedelta(days=40),
]
CUT = timedelta(days=10)


@pytest.mark.parametrize(
    ("raw", "period"),
    [
        ("90", timedelta(days=90)),
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("45m", timedelta(minutes=45)),
        (" 1.5D ", timedelta(days=1.5)),
        ("0", None),
        ("0d", None),
    ],
)
def test_periods_as_operators_write_them(raw, period):
    assert parse_period(raw, "POLLING_RETAIN_READINGS") == period


def test_a_bad_period_names_its_setting():
    with pytest.raises(ConfigError, match="POLLING_RETAIN_POLL_LOG='a week'"):
        Settings.from_env({"POLLING_RETAIN_POLL_LOG": "a week"}, env_file="/dev/null")


def test_the_settings_cut_falls_on_a_day_and_older_than_counts_from_now():
    settings = Settings(retain_readings="90", retain_poll_log="12h", retain_diagnostics="0")
    cuts = retention.cuts(settings, now=NOW)
    today = datetime(2026, 12, 4, tzinfo=UTC)
    assert cuts["readings"] == today - timedelta(days=90)
    assert cuts["poll_log"] == today - timedelta(hours=12)
    assert cuts["diagnostic_runs"] is None
    assert set(retention.cuts(settings, now=NOW, older_than=CUT).values()) == {NOW - CUT}


def test_beat_runs_the_cleanup_daily_on_the_scheduling_queue():
    entry = beat_schedule(Settings())["retention-cleanup"]
    assert entry["task"] == CLEANUP_TASK
    assert entry["options"]["queue"] == SCHEDULING
    assert entry["schedule"].remaining_estimate(NOW) <= timedelta(days=1)


@pytest.fixture
def aged(runtime):
    """A gateway with a reading, a poll-log row and a diagnostic run at each of AGES; on
    PostgreSQL with day partitions from 25 to 3 days back (so the rows of 40 days go to
    DEFAULT). Dropped again afterwards."""
    postgres = runtime.engine.dialect.name == "postgresql"
    with runtime.engine.begin() as conn:
        if postgres:
            partitions.ensure(conn, now=NOW - timedelta(days=25), days_ahead=22)
        gateway_id = conn.execute(
            insert(GatewayRow).returning(GatewayRow.id),
            [dict(name="old", host="127.0.0.1", port=502, device_id=1, interval_s=1, timeout_s=1)],
        ).scalar_one()
        slots = [NOW - age for age in AGES]
        conn.execute(
            insert(Reading),
            [
                dict(gateway_id=gateway_id, point="p", slot_at=s, kind="scheduled", read_at=s)
                for s in slots
            ],
        )
        conn.execute(
            insert(PollLog),
            [dict(gateway_id=gateway_id, slot_at=s, kind="scheduled", outcome="ok") for s in slots],
        )
        conn.execute(
            insert(DiagnosticRun),
            [dict(ran_at=s, health="healthy", findings={}, repairs={}) for s in slots],
        )
        alert = dict(rule="gateway_offline", severity="critical", message="m")
        conn.execute(
            insert(AlertRow),
            [
                dict(
                    alert, subject=f"old{i}", state="resolved", first_at=s, last_at=s, resolved_at=s
                )
                for i, s in enumerate(slots)
            ]
            # Open for 40 days: an open alert is never removed, however old.
            + [
                dict(
                    alert,
                    subject="open",
                    state="new",
                    first_at=slots[-1],
                    last_at=slots[-1],
                    resolved_at=None,
                )
            ],
        )
    yield slots
    if postgres:
        with runtime.engine.begin() as conn:
            for table in partitions.PARTITIONED:
                for p in partitions.partitions(conn, table):
                    if p.upper is not None and p.upper <= partitions.day_of(datetime.now(UTC)):
                        partitions.drop(conn, table, p)


def times(runtime) -> dict[str, list[datetime]]:
    with runtime.sessions() as session:
        return {
            "readings": sorted(session.scalars(select(Reading.slot_at))),
            "poll_log": sorted(session.scalars(select(PollLog.slot_at))),
            "diagnostic_runs": sorted(session.scalars(select(DiagnosticRun.ran_at))),
            "alerts": sorted(session.scalars(select(AlertRow.resolved_at).where(resolved))),
        }


def test_a_dry_run_reports_and_changes_nothing(runtime, aged):
    before = times(runtime)
    reports, created = retention.run(
        runtime.engine, runtime.settings, now=NOW, older_than=CUT, dry_run=True
    )
    assert created == []
    assert times(runtime) == before
    older = sum(1 for s in aged if s < NOW - CUT)
    assert {r.table: r.removed for r in reports} == {
        "readings": older,
        "poll_log": older,
        "diagnostic_runs": older,
        "alerts": older,
    }
    line = reports[0].line(dry_run=True)
    assert line.startswith("readings: would delete ") and "older than 2026-11-24T06:00" in line


def test_a_real_run_removes_exactly_what_is_older_and_keeps_the_rest(runtime, aged):
    cut = NOW - CUT
    reports = retention.cleanup(
        runtime.engine, runtime.settings, now=NOW, older_than=CUT, batch_size=2
    )
    kept = sorted(s for s in aged if s >= cut)
    assert times(runtime) == dict.fromkeys(
        ("readings", "poll_log", "diagnostic_runs", "alerts"), kept
    )
    with runtime.sessions() as session:
        assert session.scalar(select(AlertRow.subject).where(~resolved)) == "open"
    by_table = {r.table: r for r in reports}
    assert by_table["diagnostic_runs"].removed == len(aged) - len(kept)
    if runtime.engine.dialect.name == "postgresql":
        # The days wholly before the cut went whole; the day of the cut and DEFAULT
        # (the rows of 40 days ago) lost their older rows in batches.
        dropped = by_table["readings"].dropped
        assert dropped[0] == "readings_p20261109" and dropped[-1] == "readings_p20261123"
        assert by_table["readings"].deleted == 3  # 10 d 1 min, 10 d 5 h; 40 d in DEFAULT
        with runtime.engine.connect() as conn:
            names = {p.name for p in partitions.partitions(conn, "readings")}
        assert "readings_p20261124" in names and not names & set(dropped)
    again = retention.cleanup(runtime.engine, runtime.settings, now=NOW, older_than=CUT)
    assert sum(r.removed for r in again) == 0


def test_a_period_of_zero_keeps_the_table(runtime, aged):
    settings = Settings(
        **{**runtime.settings.__dict__, "retain_readings": "0", "retain_poll_log": "1d"}
    )
    reports = retention.cleanup(runtime.engine, settings, now=NOW)
    assert reports[0].line(dry_run=False) == "readings: kept forever (POLLING_RETAIN_READINGS=0)"
    after = times(runtime)
    assert after["readings"] == sorted(aged)
    assert after["poll_log"] == sorted(
        s for s in aged if s >= partitions.day_of(NOW) - timedelta(1)
    )


def test_the_cli_prints_a_line_per_table(runtime, aged, env):
    dry = CliRunner().invoke(main, ["cleanup", "--older-than", "10d", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    lines = dry.output.splitlines()
    tables = ["readings", "poll_log", "diagnostic_runs", "alerts"]
    assert [line.split(":")[0] for line in lines] == tables
    assert all("would delete" in line for line in lines)
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Reading)) == len(aged)
    bad = CliRunner().invoke(main, ["cleanup", "--older-than", "soon"], env=env)
    assert bad.exit_code == 1 and "--older-than='soon'" in bad.output


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # partitions are PG's
def test_partitions_are_made_ahead_with_a_default(runtime):
    later = datetime.now(UTC) + timedelta(days=30)
    with runtime.engine.begin() as conn:
        created = partitions.ensure(conn, now=later, days_ahead=2)
        assert partitions.ensure(conn, now=later, days_ahead=2) == []  # once
        days = [partitions.day_of(later) + n * partitions.DAY for n in range(3)]
        assert created == [partitions.partition_name("readings", d) for d in days] + [
            partitions.partition_name("poll_log", d) for d in days
        ]
        assert any(p.default for p in partitions.partitions(conn, "readings"))
        # A row of a day without a partition goes to DEFAULT; that day's partition is
        # then not made (PostgreSQL would refuse it), and the row stays.
        stray = later + timedelta(days=10)
        gateway_id = conn.execute(
            insert(GatewayRow).returning(GatewayRow.id),
            [
                dict(
                    name="ahead", host="127.0.0.1", port=502, device_id=1, interval_s=1, timeout_s=1
                )
            ],
        ).scalar_one()
        conn.execute(
            insert(PollLog),
            [dict(gateway_id=gateway_id, slot_at=stray, kind="scheduled", outcome="ok")],
        )
        where = conn.execute(text("SELECT tableoid::regclass::text FROM poll_log")).scalar()
        assert where == "poll_log_default"
        made = partitions.ensure(conn, now=stray, days_ahead=0)
        assert made == [partitions.partition_name("readings", partitions.day_of(stray))]
        for table in partitions.PARTITIONED:
            for p in partitions.partitions(conn, table):
                if p.lower is not None and p.lower >= partitions.day_of(later):
                    partitions.drop(conn, table, p)
