"""Issue 16, automatic recovery: a device goes away long enough to be disabled, stays
away through a probe, then comes back; its gateway polls again within one probe delay
with no human, and the record shows failed, then nothing while disabled (a pause, not
missed slots), then ok. Every slot is still polled at most once at the device."""

from __future__ import annotations

import json
import time

import pytest

from tests.faultproxy import FaultProxy
from tests.faults.fleets import document
from tests.faults.harness import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.long]

FIRST, MOST = 2.0, 4.0  # probe delays (s): the first, and the cap after doubling


def test_a_disabled_gateway_comes_back_on_its_own(rig_factory, free_ports):
    rig = rig_factory(recovery_first=FIRST, recovery_max=MOST)
    healthy, away = free_ports(2)
    served = document([healthy, away], interval=0.5, timeout=0.3)
    rig.simulate(served)
    proxy = FaultProxy(("127.0.0.1", away)).start()
    try:
        doc = document([healthy, proxy.port], interval=0.5, timeout=0.3)
        rig.install(doc)
        rig.worker()
        rig.beat()
        rig.pollctl("start")
        started = time.time()
        wait_until(lambda: rig.polled_since(started), 15, "both gateways polled")
        proxy.set("refuse")

        def gw1() -> dict:
            status = json.loads(rig.pollctl("status", "--json", "--gateway", "gw1").stdout)
            return status[0]

        wait_until(lambda: gw1()["breaker"] == "open", 15, "gw1 disabled by its failures")
        disabled = time.time()
        assert gw1()["colour"] == "red" and gw1()["next_probe_at"]
        # Away through one probe: the delay doubles to the cap.
        wait_until(
            lambda: any(r.outcome == "failed" for r in rig.probes("gw1")), 15, "a failed probe"
        )
        proxy.set("pass")
        back = time.time()
        wait_until(lambda: rig.polled_since(back, ["gw1"]), MOST + 10, "gw1 polling again")
        recovered = min(
            r.started_at.timestamp()
            for r in rig.record().rows["gw1"]
            if r.outcome == "ok" and r.started_at.timestamp() > back
        )
        time.sleep(2)
        rig.pollctl("stop")
        stopped = time.time()
    finally:
        proxy.stop()
    # Within one probe delay (the cap, by now) and the reconcile that sends the probe.
    bound = MOST + rig.settings.reconcile_seconds + 2 * 0.5
    assert recovered - back <= bound, f"{recovered - back:.1f} s > {bound} s"
    print(f"\npolling again {recovered - back:.1f} s after the device came back (<= {bound} s)")
    rows = rig.record().rows["gw1"]
    # The pause: from the slot after the failure that disabled it to its recovery.
    last_failed = max(r.slot_at.timestamp() for r in rows if r.outcome == "failed")
    assert last_failed < disabled
    row = rig.check(
        "16.1 a device away until disabled, then back: recovered with no human",
        started=started,
        stopped=stopped,
        fault_end=back,
        bound=bound,
        paused=(last_failed + 0.5, recovered),
    )
    assert row.duplicates == 0
    outcomes = [r.outcome for r in rows]
    first_failure = outcomes.index("failed")
    first_ok_after = outcomes.index("ok", first_failure)
    assert set(outcomes[:first_failure]) == {"ok"}
    assert set(outcomes[first_failure:first_ok_after]) == {"failed"}, outcomes  # no missed
    assert set(outcomes[first_ok_after:]) == {"ok"}
    assert rig.probes("gw1")[-1].outcome == "ok"
    assert rig.record().outcomes("gw0").keys() == {"ok"}
