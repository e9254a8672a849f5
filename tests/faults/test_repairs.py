"""Beat's diagnostics task repairs what drifted and records it; `validate` and `audit` are
clean on a healthy fleet."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from polling.gateways import Point
from polling.models import DiagnosticRun, Reading
from polling.outcome import Outcome, PollKind
from polling.records import PollEntry, PollRecord, reading_row, to_json
from polling.repository import load_gateways
from tests.faults.fleets import POINTS, document
from tests.faults.harness import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.slow]


def test_diagnostics_task_repairs_drift_and_records_it(rig_factory, free_ports):
    rig = rig_factory()
    doc = document(free_ports(2))
    rig.simulate(doc, latency_ms=10)
    rig.install(doc)
    rig.worker()
    rig.beat()
    rig.pollctl("start")
    started = time.time()
    wait_until(lambda: rig.polled_since(started), 15, "every gateway polled")
    validate = rig.pollctl("validate", check=False)
    assert validate.returncode == 0, validate.stdout
    assert validate.stdout.startswith("health: healthy")
    audit = rig.pollctl("audit", "--json", check=False)
    assert audit.returncode == 0, audit.stdout
    assert json.loads(audit.stdout)["health"] == "clean"

    rt = rig.runtime
    rt.chains.issue([(987_654, rt.clock(), None)])  # a chain of a gateway that does not exist
    orphan = rt.keys.endpoint_lock("127.0.0.1", 1)
    rt.redis.set(orphan, "left by a crashed release")  # and never expires
    injected_at = datetime.now(UTC)

    def actions() -> list[str]:
        with rt.sessions() as session:
            runs = session.scalars(select(DiagnosticRun).where(DiagnosticRun.ran_at > injected_at))
            return [a for run in runs for acts in run.repairs.values() for a in acts]

    def both_repaired() -> bool:
        done = actions()
        return any("#987654" in a for a in done) and any(orphan in a for a in done)

    # Reconcile (every second) retires the chain, the diagnostics run (every 2 s) the lock.
    wait_until(both_repaired, 20, "both repairs recorded")
    assert 987_654 not in rt.chains.all() and not rt.redis.exists(orphan)
    out = rig.pollctl("diagnose", check=False).stdout
    assert "recent diagnostics runs by beat" in out and "#987654" in out
    rig.pollctl("stop")
    rig.check("diagnostics task repairs drift", started=started, stopped=time.time())


def test_bad_records_in_the_buffer_stop_no_repair(rig_factory, free_ports):
    """A buffered record of a deleted gateway and one kept twice: reconcile still restarts a
    chain Redis lost; the bad record is put aside, reported, and dropped by an operator."""
    rig = rig_factory()
    doc = document(free_ports(3))
    rig.simulate(doc, latency_ms=10)
    rig.install(doc)
    rig.worker()
    rig.beat()
    rig.pollctl("start")
    started = time.time()
    wait_until(lambda: rig.polled_since(started), 15, "every gateway polled")

    rt = rig.runtime
    with rt.sessions() as session:
        gateways = {g.config.name: g for g in load_gateways(session)}
    now = rt.clock()
    points = rig.gateways["gw0"].points
    deleted = record_of(gateways["gw2"].id + 1000, points, now, PollKind.SCHEDULED)  # gone
    twice = record_of(gateways["gw1"].id, points, now, PollKind.MANUAL)
    rt.buffer.push(deleted, now)
    rt.redis.rpush(rt.keys.buffer, json.dumps(twice), json.dumps(twice))
    rt.redis.delete(rt.keys.chain(gateways["gw0"].id))  # a chain Redis lost
    injected = time.time()

    wait_until(lambda: rig.polled_since(injected, ["gw0"]), 15, "gw0's chain restarted")
    # A reconcile may have read the buffer just before the pushes: the next one flushes.
    wait_until(lambda: rt.buffer.pending() == 0, 5, "the buffer flushed")
    assert rt.buffer.dead_count() == 1
    with rt.sessions() as session:
        manual = session.scalar(
            select(func.count()).select_from(Reading).where(Reading.kind == PollKind.MANUAL)
        )
    assert manual == len(POINTS)  # the record kept twice went in once

    validate = rig.pollctl("validate", check=False)
    assert validate.returncode == 1 and "refused by the database" in validate.stdout
    shown = rig.pollctl("buffer", "show").stdout
    assert "refused 1" in shown and f"#{gateways['gw2'].id + 1000}" in shown
    assert rig.pollctl("buffer", "drop", "--yes").stdout == "dropped 1 refused records\n"
    rig.pollctl("stop")
    rig.check(
        "13.1 bad records in the buffer (deleted gateway, kept twice), a chain lost",
        started=started,
        stopped=time.time(),
        fault_end=injected,
        bound=rig.settings.reconcile_seconds + 2 * 1.0,
    )


def record_of(gateway_id: int, points: list[Point], slot_ms: int, kind: PollKind) -> dict:
    """A buffered ok poll of `points`, as a worker would have pushed it."""
    at = datetime.now(UTC)
    readings = [reading_row(gateway_id, p, 1.0, slot_ms, kind, at) for p in points]
    return to_json(PollEntry(PollRecord(gateway_id, slot_ms, kind, Outcome.OK, at, at), readings))
