"""Polling goes on while retention trims a large table (long, PostgreSQL): a real worker
polls a small fleet; `pollctl cleanup` drops six day partitions and deletes, in batches,
the old rows in DEFAULT (some millions of readings between them); lateness p99 during the
cleanup is compared with p99 just before it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import select, text

from polling import partitions, service
from polling.gatewayfile import parse_gateways
from polling.models import GatewayRow, PollLog
from polling.repository import import_gateways
from tests.fleet import fleet
from tests.processes import ROOT, Beat, Worker
from tests.test_e2e import wait_until
from workers.senders import send_poll

pytestmark = [pytest.mark.long, pytest.mark.e2e, pytest.mark.slow]

#: Readings in old day partitions (dropped whole) and in DEFAULT (deleted in batches).
IN_PARTITIONS = 1_000_000
IN_DEFAULT = 4_000_000
BEFORE_SECONDS = 15

_OLD_READINGS = """
INSERT INTO readings (gateway_id, point, slot_at, kind, read_at, value, unit)
SELECT :gateway, 'point_' || n % 10, s, 'scheduled', s, n, 'kWh'
FROM generate_series(0, :rows - 1) n,
  LATERAL (SELECT CAST(:first AS timestamptz) + (n / 10) * :step * interval '1 ms' AS s) t
"""


def old_readings(runtime, gateway_id: int, now: datetime) -> None:
    """IN_PARTITIONS readings over six day partitions 40 to 35 days back, IN_DEFAULT in
    DEFAULT 60 days back (before any partition)."""
    first_day = partitions.day_of(now - timedelta(days=40))
    with runtime.engine.begin() as conn:
        partitions.ensure(conn, now=first_day, days_ahead=5)
        step = 6 * 86_400_000 // (IN_PARTITIONS // 10)
        conn.execute(
            text(_OLD_READINGS),
            {"gateway": gateway_id, "rows": IN_PARTITIONS, "first": first_day, "step": step},
        )
        conn.execute(
            text(_OLD_READINGS),
            {
                "gateway": gateway_id,
                "rows": IN_DEFAULT,
                "first": now - timedelta(days=60),
                "step": 1,
            },
        )
    with runtime.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE readings"))


def late_ms(runtime, since: datetime, until: datetime) -> list[float]:
    """Start minus slot of the polls whose slots fall in [since, until), sorted."""
    with runtime.sessions() as session:
        rows = session.execute(
            select(PollLog.slot_at, PollLog.started_at).where(
                PollLog.slot_at >= since, PollLog.slot_at < until, PollLog.outcome == "ok"
            )
        ).all()
    return sorted((started - slot).total_seconds() * 1000 for slot, started in rows)


def p(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_polling_keeps_time_while_cleanup_trims_a_large_table(
    runtime, env, simulate, free_ports, processes, celery_app
):
    document = fleet(free_ports(20), [0.5] * 20)
    simulate(document)
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
    with runtime.sessions() as session:
        gateway_id = session.scalars(select(GatewayRow.id)).first()
    began = time.monotonic()
    old_readings(runtime, gateway_id, datetime.now(UTC))
    print(f"\n{IN_PARTITIONS + IN_DEFAULT:,} old readings in {time.monotonic() - began:.1f} s")
    worker = processes(Worker, env, "worker")
    processes(Beat, env, "beat")
    worker.wait_ready()
    service.start(runtime, partial(send_poll, celery_app))
    started = datetime.now(UTC)
    wait_until(lambda: len(late_ms(runtime, started, datetime.now(UTC))) >= 100, 60, "polling")
    time.sleep(BEFORE_SECONDS)  # the window measured before the cleanup, not a sync
    cleanup_from = datetime.now(UTC)
    done = subprocess.run(
        [sys.executable, "-m", "cli", "cleanup", "--older-than", "30d"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    cleanup_until = datetime.now(UTC)
    service.stop(runtime)
    assert done.returncode == 0, done.stderr
    print(done.stdout.strip())
    readings_line = done.stdout.splitlines()[0]
    assert f"deleted {IN_DEFAULT:,} rows and dropped 6 partitions" in readings_line, readings_line
    before = late_ms(runtime, cleanup_from - timedelta(seconds=BEFORE_SECONDS), cleanup_from)
    during = late_ms(runtime, cleanup_from, cleanup_until)
    seconds = (cleanup_until - cleanup_from).total_seconds()
    print(
        f"cleanup took {seconds:.1f} s; lateness p50 / p99 / max: before "
        f"{p(before, 0.5):.1f} / {p(before, 0.99):.1f} / {before[-1]:.1f} ms "
        f"({len(before)} polls), "
        f"during {p(during, 0.5):.1f} / {p(during, 0.99):.1f} / {during[-1]:.1f} ms "
        f"({len(during)} polls)"
    )
    assert len(during) >= 0.9 * 40 * seconds  # 20 gateways at 0.5 s: every slot polled
    assert p(during, 0.99) <= 2 * p(before, 0.99) + 50
