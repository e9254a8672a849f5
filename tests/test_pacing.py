"""Paced start (polling/pacing.py): pure slot arithmetic, tested by cases; and `start`
spreading a large fleet's first polls, with `polling_since` following them."""

from __future__ import annotations

import dataclasses

from sqlalchemy import select

from polling import service
from polling.models import GatewayRow
from polling.pacing import paced_firsts
from polling.schedule import Grid
from polling.settings import Settings
from tests.fleet import fleet
from tests.test_service import Sent, setup_fleet

CAP = 3_600_000


def test_a_fleet_thinner_than_the_rate_keeps_its_first_slots():
    grids = [Grid(anchor_ms=100 * k, interval_ms=1000) for k in range(10)]
    firsts = [(g, g.starting(0)) for g in grids]
    assert paced_firsts(firsts, 0, rate=10, cap_ms=CAP) == [f for _, f in firsts]


def test_the_kth_first_poll_waits_k_over_rate_seconds():
    # Ten gateways all due at 1000 (interval 1 s), 2 first polls a second: the k-th
    # begins at its first slot at or after k / 2 s (k = 2 at 1.0 s keeps slot 1000).
    grids = [Grid(anchor_ms=0, interval_ms=1000) for _ in range(10)]
    paced = paced_firsts([(g, 1000) for g in grids], 0, rate=2, cap_ms=CAP)
    assert paced == [1000, 1000, 1000, 2000, 2000, 3000, 3000, 4000, 4000, 5000]
    # Never more than rate x t + 1 first polls by any time t.
    assert all(sum(at <= t for at in paced) <= 2 * t / 1000 + 1 for t in paced)


def test_pacing_never_delays_past_its_cap():
    grids = [Grid(anchor_ms=0, interval_ms=1000) for _ in range(100)]
    paced = paced_firsts([(g, 1000) for g in grids], 0, rate=1, cap_ms=5000)
    assert max(paced) == 5000


def test_a_first_slot_in_progress_stays_first():
    grid = Grid(anchor_ms=0, interval_ms=60_000)
    # Started 1 s into a 60 s slot: the slot in progress is the first, due now.
    assert paced_firsts([(grid, 0), (grid, 0)], 1000, rate=1, cap_ms=CAP) == [0, 60_000]


def test_order_follows_the_first_slots_not_the_input():
    a, b = Grid(anchor_ms=0, interval_ms=10_000), Grid(anchor_ms=500, interval_ms=10_000)
    # b's first slot (500) comes before a's (10_000): b goes first, a is not moved.
    assert paced_firsts([(a, 10_000), (b, 500)], 0, rate=1, cap_ms=CAP) == [10_000, 500]


def test_start_paces_first_polls_and_moves_polling_since(runtime, free_ports):
    count, rate = 40, 10.0
    setup_fleet(runtime, fleet(free_ports(count), [1.0] * count))
    runtime.settings = dataclasses.replace(runtime.settings, start_rate=rate)
    rt = runtime
    sent = Sent()
    before = rt.clock()
    service.start(rt, sent)
    firsts = sorted(slot for _, _, slot in sent.calls)
    assert len(firsts) == count
    # 40 first polls at 10 a second: spread over about 4 s, never more than rate x t + 1
    # of them by any time t after the start.
    assert firsts[-1] - before >= 1000 * (count - 1) / rate
    assert all(sum(f <= t for f in firsts) <= rate * (t - before) / 1000 + 1 for t in firsts)
    with rt.sessions() as session:
        since = dict(session.execute(select(GatewayRow.id, GatewayRow.polling_since)).all())
    for gateway_id, _, slot in sent.calls:
        stamp = round(since[gateway_id].timestamp() * 1000)
        assert stamp <= slot  # polling begins no later than the first slot
    assert Settings().start_rate == 200.0


def test_a_paced_start_stops_cleanly(runtime, free_ports):
    count = 20
    setup_fleet(runtime, fleet(free_ports(count), [1.0] * count))
    runtime.settings = dataclasses.replace(runtime.settings, start_rate=5.0)
    service.start(runtime, Sent())
    report = service.stop(runtime)
    assert sorted(report.stopped) == sorted(f"gw{i}" for i in range(count))


def test_reconcile_leaves_a_paced_chain_more_than_an_interval_ahead_alone(runtime, free_ports):
    """A paced first slot may lie many intervals ahead; reconcile restarts chains further
    ahead than one interval (a clock's error), but not these: that would undo the pacing
    (every restarted chain starts at its next slot, all at once)."""
    count = 30
    setup_fleet(runtime, fleet(free_ports(count), [1.0] * count))
    runtime.settings = dataclasses.replace(runtime.settings, start_rate=5.0)
    sent = Sent()
    service.start(runtime, sent)
    before = {gateway_id: (token, slot) for gateway_id, token, slot in sent.calls}
    assert max(slot for _, slot in before.values()) - runtime.clock() > 3_000
    report = service.reconcile(runtime, Sent())
    assert report.restarted == [] and report.started == []
    chains = runtime.chains.all()
    assert {g: (c.token, c.due_ms) for g, c in chains.items()} == before
