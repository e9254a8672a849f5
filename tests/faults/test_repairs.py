"""Beat's diagnostics task repairs what drifted and records it; `validate` and `audit` are
clean on a healthy fleet."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from polling.models import DiagnosticRun
from tests.faults.fleets import document
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
