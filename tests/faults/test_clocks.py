"""Fault 13.2: hosts whose clocks disagree. A worker 30 s ahead beside a healthy one, and
beat 30 s behind, on one fleet; then the worker's clock is stepped back in line mid-run.
Slots are decided on Redis's clock, so nothing is polled twice and nothing is written as
missed ahead of time; the skewed worker stands aside while it is off (Celery would time
ETA messages by its clock), says why, and polls again once its clock is back."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.faketime import SLEEP_SHIM, skewed, step, stepped
from tests.faults.fleets import document
from tests.faults.harness import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.slow]

#: A worker's line per poll batch (workers/tasks.py).
BATCH_RUN = re.compile(r"batch of \d+ steps in ")


def test_a_worker_ahead_and_beat_behind_cost_no_slot(rig_factory, free_ports, tmp_path):
    rig = rig_factory()
    doc = document(free_ports(6))
    rig.simulate(doc, latency_ms=10)
    rig.install(doc)
    rig.worker("healthy")
    offset = tmp_path / "ahead.faketime"
    ahead = rig.worker("ahead", preamble=SLEEP_SHIM, **stepped("+30s", offset))
    rig.beat(preamble=SLEEP_SHIM, **skewed("-30s"))
    rig.pollctl("start")
    started = time.time()
    wait_until(lambda: rig.polled_since(started), 15, "every gateway polled")
    time.sleep(15)  # a stretch of polling with the skewed worker up

    report = json.loads(rig.pollctl("validate", "--json", check=False).stdout)
    clocks = {c["component"]: c for c in report["checks"]}["clocks"]
    assert clocks["status"] == "error", clocks
    assert ahead.hostname in clocks["message"] and "30." in clocks["message"], clocks
    assert "not polling: this host's clock is 30." in ahead.output()
    batches_while_off = len(BATCH_RUN.findall(ahead.output()))

    step(offset, "+0")  # its time sync catches up
    wait_until(lambda: "polling again" in ahead.output(), 20, "the worker back on polling")
    wait_until(
        lambda: len(BATCH_RUN.findall(ahead.output())) > batches_while_off + 3,
        20,
        "batches polled by the worker whose clock is back",
    )
    rig.pollctl("stop")
    row = rig.check(
        "13.2 a worker 30 s ahead (then stepped back), beat 30 s behind",
        started=started,
        stopped=time.time(),
    )
    assert row.polled >= 0.9 * row.expected, row
    assert row.missed <= 0.05 * row.expected, row
