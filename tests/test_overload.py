"""Graceful overload with a real worker: a batch the worker begins too late after its slots
is shed (recorded as skipped, never polled at the device), and the chains go on polling
on time; `/metrics`' counters and `validate`'s overload check report it."""

from __future__ import annotations

import time
from collections import defaultdict
from functools import partial

import pytest
from sqlalchemy import select

from polling import counters, service
from polling.checks.base import Context
from polling.checks.overload import check_overload
from polling.models import GatewayRow, PollLog
from polling.schedule import dt_to_ms
from polling.shedding import is_shed
from tests.faults.harness import wait_until
from tests.fleet import fleet
from tests.processes import Worker
from tests.test_service import Sent, setup_fleet
from webapi.metrics import FleetCollector
from workers.broker import RedisQueues
from workers.senders import send_batch, send_poll

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POINTS = [{"name": "status", "address": 0, "type": "uint16"}]
INTERVAL = 2.0
#: How long after its slot each chain's first step reaches the worker: past the late limit
#: (0.25 s at a 2 s interval), well inside the slot.
LATE_MS = 700
#: How long the overloaded fleet runs.
OVERLOAD_SECONDS = 30


def rows_by_gateway(runtime) -> dict[str, list[PollLog]]:
    with runtime.sessions() as session:
        names = dict(session.execute(select(GatewayRow.id, GatewayRow.name)).all())
        rows = session.scalars(
            select(PollLog).where(PollLog.kind == "scheduled").order_by(PollLog.slot_at)
        )
        out: dict[str, list[PollLog]] = defaultdict(list)
        for row in rows:
            out[names[row.gateway_id]].append(row)
    return out


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_steps_the_worker_begins_late_are_shed_not_polled_and_the_chains_go_on(
    runtime, env, simulate, free_ports, celery_app, tmp_path
):
    document = fleet(free_ports(3), [INTERVAL] * 3, POINTS)
    sim = simulate(document)
    gateways = setup_fleet(runtime, document)
    worker = Worker(env, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        sent = Sent()
        service.start(runtime, sent)
        # As if each first step had waited in a backlog: it reaches the worker (whose
        # clock is Redis's, as `runtime.clock`) LATE_MS after its slot began.
        for step in sorted(sent.calls, key=lambda s: s[2]):
            time.sleep(max(0.0, (step[2] + LATE_MS - runtime.clock()) / 1000))
            send_batch(celery_app, [step])

        def each_polled_twice_after() -> bool:
            rows = rows_by_gateway(runtime)
            return all(sum(r.outcome == "ok" for r in rows.get(n, [])) >= 2 for n in gateways)

        wait_until(each_polled_twice_after, 20, "two polls of each gateway after its shed slot")
        result = check_overload(Context(runtime))
        service.stop(runtime)
    finally:
        worker.stop()
    rows = rows_by_gateway(runtime)
    for name, gateway in gateways.items():
        first, *rest = rows[name]
        assert first.outcome == "skipped", (name, first.outcome, first.error)
        assert first.error.startswith("shed: the worker began this poll 0.")
        assert first.error.endswith("after its slot (limit 0.25 s)")
        assert first.started_at is None
        # The chain went on at the next slot, polled (a slot is never shed and polled).
        assert dt_to_ms(rest[0].slot_at) == dt_to_ms(first.slot_at) + round(INTERVAL * 1000)
        assert {r.outcome for r in rest} == {"ok"}, [(r.outcome, r.error) for r in rest]
        # Not polled at the device: its first request came for the next slot (the
        # device's clock is the host's; 30 ms for the workers' Redis clock, as the fault
        # suite allows).
        reads = [at for at, port, _, _ in list(sim.traffic.reads) if port == gateway.config.port]
        assert reads and min(reads) * 1000 >= dt_to_ms(rest[0].slot_at) - 30
    fleet_counters = counters.read_counters(runtime.redis, runtime.keys)
    assert fleet_counters.shed == {g.id: 1 for g in gateways.values()}
    scrape = FleetCollector(runtime, RedisQueues(runtime.redis, runtime.keys.broker)).collect()
    (shed_family,) = [m for m in scrape if m.name == "pollctl_polls_shed"]
    assert {(s.labels["gateway"], s.value) for s in shed_family.samples} == {
        (name, 1) for name in gateways
    }
    assert result.status == "warning"
    assert result.message.startswith("overload: 3 of ")
    assert result.details["shed"] == 3
    assert result.message.endswith("polls/s of 1.5 offered")  # 3 gateways at 2 s


@pytest.mark.long
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_under_overload_shed_slots_spread_evenly_over_gateways(
    runtime, env, simulate, free_ports, celery_app, tmp_path
):
    """A worker with one thread and devices that take 150 ms a request can make about six
    batches a second; twenty gateways at 1 s offer about nine. Batches begun late are
    shed, the others polled on time, and the shortfall falls on every gateway alike: the
    worst gateway's shed slots within twice the mean, none starved."""
    document = fleet(free_ports(20), [1.0] * 20, POINTS)
    simulate(document, latency_ms=150)
    gateways = setup_fleet(runtime, document)
    worker = Worker(env, tmp_path / "worker.log", concurrency=1)
    try:
        worker.wait_ready()
        service.start(runtime, partial(send_poll, celery_app))
        started = time.time()
        time.sleep(OVERLOAD_SECONDS)  # the run under test, not a synchronisation
        service.stop(runtime)
    finally:
        worker.stop()
    rows = rows_by_gateway(runtime)
    shed = {n: sum(r.outcome == "skipped" and is_shed(r.error) for r in rows[n]) for n in gateways}
    made = {n: sum(r.outcome == "ok" for r in rows[n]) for n in gateways}
    late = sorted(
        (r.started_at - r.slot_at).total_seconds() * 1000
        for n in gateways
        for r in rows[n]
        if r.outcome == "ok" and r.slot_at.timestamp() > started + 5
    )
    mean = sum(shed.values()) / len(shed)
    print(f"\nshed per gateway {sorted(shed.values())}, made {sorted(made.values())}")
    print(f"lateness of the polls made: p50 {late[len(late) // 2]:.0f} ms, max {late[-1]:.0f} ms")
    assert mean >= 3, f"the worker was not overloaded: {shed}"
    assert max(shed.values()) <= 2 * mean, f"shed unevenly: {shed}"
    assert min(made.values()) > 0, f"a gateway starved: {made}"
