"""Poll batches against real Redis, a real database (SQLite and PostgreSQL) and simulated
devices: each step of a batch keeps the guarantees of a single chain step."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from polling import pipeline, service
from polling.models import GatewayRow
from polling.outcome import Outcome
from polling.plan import PollTarget
from polling.repository import delete_gateway, load_gateways
from polling.schedule import ms_to_dt
from polling.steps import StepSender, group_steps
from tests.fleet import ALL_TYPES, fleet
from tests.test_service import Sent, poll_rows, reading_rows, setup_fleet


def started(runtime, names=None) -> list[tuple[int, str, int]]:
    sent = Sent()
    service.start(runtime, sent, names)
    return sent.calls


def test_group_steps_by_window_and_size():
    steps = [(1, "a", 1_000), (2, "b", 1_050), (3, "c", 1_099), (4, "d", 1_100), (5, "e", 950)]
    assert group_steps(steps, 100, 2) == [
        [(5, "e", 950)],
        [(1, "a", 1_000), (2, "b", 1_050)],
        [(3, "c", 1_099)],
        [(4, "d", 1_100)],
    ]
    # Window 0: only equal slot starts travel together.
    assert group_steps([(1, "a", 5), (2, "b", 5), (3, "c", 6)], 0, 10) == [
        [(1, "a", 5), (2, "b", 5)],
        [(3, "c", 6)],
    ]


def test_sender_holds_steps_until_their_window_is_due_and_sends_each_window_once():
    sent: list[list] = []
    now = [10_000]
    sender = StepSender(sent.append, 100, 10, clock=lambda: now[0])
    sender.put([(1, "t", 10_100), (2, "t", 10_150), (3, "t", 10_400), (4, "t", 10_420)])
    # Due within the lead (250 ms): the first window goes at once; the rest waits.
    assert sent == [[(1, "t", 10_100), (2, "t", 10_150)]]
    now[0] = 10_200
    assert sender.send_due() == 2
    assert sent[1:] == [[(3, "t", 10_400), (4, "t", 10_420)]]
    assert sender.send_due() == 0 and sender.pending() == 0


def test_a_late_step_never_travels_with_steps_of_later_windows():
    """A late step in one batch with the lead's later windows ends the batch later still, and
    its successor is late again, interval after interval: at 0.25 s intervals (lead =
    interval) two gateways stayed 180 ms late for good, every other poll shed."""
    sent: list[list] = []
    now = [10_000]
    sender = StepSender(sent.append, 100, 10, clock=lambda: now[0])
    sender.put([(1, "t", 9_820), (2, "t", 10_010), (3, "t", 10_120), (4, "t", 10_230)])
    # The late step goes at once with what is due by now; each later window on its own.
    assert sent == [[(1, "t", 9_820)], [(2, "t", 10_010)], [(3, "t", 10_120)], [(4, "t", 10_230)]]
    # Steps of one window still travel together, late or not.
    sent.clear()
    sender.put([(5, "t", 9_990), (6, "t", 9_999), (7, "t", 10_050), (8, "t", 10_099)])
    sender.send_due()
    assert sent == [[(5, "t", 9_990), (6, "t", 9_999)], [(7, "t", 10_050), (8, "t", 10_099)]]


def test_sender_sends_everything_on_send_all():
    sent: list[list] = []
    sender = StepSender(sent.append, 100, 10, clock=lambda: 0)
    for gateway_id in range(3):
        sender.add(gateway_id, "t", 2_000 + gateway_id)
    assert sent == []
    assert sender.send_all() == 3
    assert sent == [[(0, "t", 2_000), (1, "t", 2_001), (2, "t", 2_002)]]
    assert sender.send_all() == 0


def test_sender_keeps_what_the_broker_refused_and_sends_it_later():
    sent: list[list] = []
    broker_up = [False]

    def send(batch: list) -> None:
        if not broker_up[0]:
            raise ConnectionError("broker down")
        sent.append(batch)

    now = [0]
    sender = StepSender(send, 100, 10, clock=lambda: now[0])
    sender.put([(1, "t", 100), (2, "t", 1_000)])
    assert sender.send_due() == 0 and sender.pending() == 2  # nothing lost
    now[0] = 900
    assert sender.send_due() == 0 and sender.pending() == 2
    broker_up[0] = True
    assert sender.send_due() == 2
    # The late one at once; the other, not yet due, in its own window's batch.
    assert sent == [[(1, "t", 100)], [(2, "t", 1_000)]]


def test_sender_thread_sends_due_windows_and_stop_sends_the_rest():
    sent: list[list] = []
    got = threading.Event()

    def send(batch: list) -> None:
        sent.append(batch)
        got.set()

    now = [0]
    sender = StepSender(send, 100, 10, clock=lambda: now[0])
    sender.put([(1, "t", 5_000), (2, "t", 60_000)])
    sender.start()
    now[0] = 4_800
    assert got.wait(5)
    assert sent == [[(1, "t", 5_000)]]
    assert sender.stop() == 0
    assert sent == [[(1, "t", 5_000)], [(2, "t", 60_000)]]
    # A batch that ends after the stop (a warm shutdown waits for it): its successor
    # leaves at once, not held in a process about to exit.
    sender.put([(3, "t", 90_000)])
    assert sent[-1] == [(3, "t", 90_000)] and sender.pending() == 0


def test_a_batch_polls_each_step_once_records_and_advances(runtime, simulate, free_ports):
    ports = free_ports(3)
    document = fleet([ports[0], ports[1], ports[2], ports[2]], [1.0, 1.0, 2.0, 1.0])
    simulate(document)
    setup_fleet(runtime, document)
    steps = started(runtime)
    result = pipeline.poll_batch(runtime, steps)
    assert result.outcomes == {Outcome.OK: 4}
    nexts = {g: (t, s) for g, t, s in result.successors}
    with runtime.sessions() as session:
        intervals = {g.id: g.config.interval for g in load_gateways(session)}
    for gateway_id, token, slot in steps:
        assert nexts[gateway_id] == (token, slot + round(1000 * intervals[gateway_id]))
        assert runtime.chains.get(gateway_id).due_ms == nexts[gateway_id][1]
    rows = poll_rows(runtime)
    assert sorted((r.gateway_id, r.slot_at, r.outcome) for r in rows) == sorted(
        (g, ms_to_dt(s), "ok") for g, _, s in steps
    )
    for row in rows:
        assert row.started_at >= row.slot_at  # no poll starts before its slot
    assert len(reading_rows(runtime)) == 4 * len(ALL_TYPES)
    # Every endpoint lock is released.
    assert list(runtime.redis.scan_iter(match=runtime.keys.locks_pattern)) == []


def test_a_duplicated_batch_polls_each_slot_once(runtime, simulate, free_ports):
    document = fleet(free_ports(3), [1.0, 1.0, 1.0])
    simulator = simulate(document)
    gateways = setup_fleet(runtime, document)
    steps = started(runtime)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: pipeline.poll_batch(runtime, steps), range(4)))
    assert sum(r.outcomes[Outcome.OK] for r in results) == 3
    assert sum(len(r.successors) for r in results) == 3
    assert len(poll_rows(runtime)) == 3
    assert len(reading_rows(runtime)) == 3 * len(ALL_TYPES)
    # At the device too: one exchange per request of each gateway, not four.
    served = Counter(port for _, port, _, _ in simulator.traffic.reads)
    assert served == {
        g.config.port: len(PollTarget.of(g, runtime.settings).requests) for g in gateways.values()
    }
    # Redelivered later, the batch finds every chain moved on.
    assert pipeline.poll_batch(runtime, steps).outcomes == {Outcome.MOVED: 3}


def test_stop_retires_every_step_of_a_queued_batch(runtime, simulate, free_ports):
    document = fleet(free_ports(2), [1.0, 1.0])
    simulate(document)
    setup_fleet(runtime, document)
    steps = started(runtime)
    service.stop(runtime)
    assert pipeline.poll_batch(runtime, steps).outcomes == {Outcome.RETIRED: 2}
    started(runtime)
    assert pipeline.poll_batch(runtime, steps).outcomes == {Outcome.STALE: 2}
    assert poll_rows(runtime) == []


def test_a_late_batch_records_missed_slots_and_moves_on(runtime, simulate, free_ports):
    document = fleet(free_ports(2), [1.0, 1.0])
    simulate(document)
    setup_fleet(runtime, document)
    steps = started(runtime)
    latest = max(s for _, _, s in steps)
    runtime.clock = lambda: latest + 3500
    result = pipeline.poll_batch(runtime, steps)
    assert result.outcomes == {Outcome.MISSED: 2}
    for gateway_id, _, slot in steps:
        rows = [r for r in poll_rows(runtime) if r.gateway_id == gateway_id]
        assert {r.outcome for r in rows} == {"missed"}
        [next_slot] = [s for g, _, s in result.successors if g == gateway_id]
        assert [r.slot_at for r in rows] == [ms_to_dt(s) for s in range(slot, next_slot, 1000)]


def test_failed_polls_are_counted_and_disable_the_gateway(runtime, free_ports):
    [port] = free_ports(1)  # nothing listens there
    gateway = setup_fleet(runtime, fleet([port], [1.0]))["gw0"]
    steps = started(runtime)
    for _ in range(3):
        [(_, _, slot)] = steps
        runtime.clock = lambda s=slot: s + 10
        result = pipeline.poll_batch(runtime, steps)
        steps = result.successors
    rows = poll_rows(runtime)
    assert [r.outcome for r in rows] == ["failed"] * 3
    assert f"cannot connect to 127.0.0.1:{port}" in rows[0].error
    assert result.outcomes == {Outcome.RETIRED: 1} and steps == []
    with runtime.sessions() as session:
        [stored] = load_gateways(session, ["gw0"])
    assert stored.disabled_reason.startswith("auto-disabled after 3 consecutive failed polls")
    assert runtime.chains.get(gateway.id) is None


def test_a_busy_endpoint_is_waited_for_then_skipped(runtime, simulate, free_ports):
    document = fleet(free_ports(1), [1.0])
    document["gateways"][0]["timeout"] = 0.2
    simulate(document)
    gateway = setup_fleet(runtime, document)["gw0"]
    steps = started(runtime)
    key = runtime.keys.endpoint_lock("127.0.0.1", gateway.config.port)
    holder = runtime.redis.lock(key, timeout=5)
    assert holder.acquire()
    try:
        result = pipeline.poll_batch(runtime, steps)
    finally:
        holder.release()
    assert result.outcomes == {Outcome.SKIPPED: 1}
    [row] = poll_rows(runtime)
    assert row.outcome == "skipped" and "busy: another poll held its lock" in row.error
    # Once free, the next step polls as usual.
    assert pipeline.poll_batch(runtime, result.successors).outcomes == {Outcome.OK: 1}
    assert [r.outcome for r in poll_rows(runtime)] == ["skipped", "ok"]


@pytest.mark.parametrize("held_s", [0.15, 0.45])
def test_a_poll_waits_out_a_failed_neighbour_and_its_record(runtime, simulate, free_ports, held_s):
    """On a bus the poll before holds the line for its whole timeout, then closes it and
    writes its record before it lets go. The next device's poll gave up just before the
    line came free (a fault row lost that neighbour's slot 3 times in 7 on a busy box): it
    counted its wait, a bare timeout, from its batch's begin, which comes ahead of the
    slot. Now from its slot, a timeout and a grace for the holder's record: a holder
    letting go 0.15 s (within the 0.2 s timeout) or 0.45 s into the slot is waited for."""
    document = fleet(free_ports(1), [1.0])
    document["gateways"][0]["timeout"] = 0.2
    simulate(document)
    gateway = setup_fleet(runtime, document)["gw0"]
    steps = started(runtime)
    [(_, _, slot)] = steps
    key = runtime.keys.endpoint_lock("127.0.0.1", gateway.config.port)
    holder = runtime.redis.lock(key, timeout=5, thread_local=False)  # released by a timer
    assert holder.acquire()
    release = threading.Timer(max(0.0, (slot - runtime.clock()) / 1000) + held_s, holder.release)
    release.start()
    try:
        result = pipeline.poll_batch(runtime, steps)
    finally:
        release.join()
    assert result.outcomes == {Outcome.OK: 1}, [(r.outcome, r.error) for r in poll_rows(runtime)]


def test_a_late_batch_still_polls_records_and_advances(runtime, simulate, free_ports):
    # A backlog delivers batches after their slots began; each still gets its budgets (a
    # deadline counted from the slot made such a batch fail and its chains die). Begun
    # 2.9 s late: past its budget (2.5 s) counted from the slot, short of where a 60 s
    # gateway starts shedding (half its 6 s late limit; later still it would be shed).
    document = fleet(free_ports(1), [60.0], [{"name": "a", "address": 0}])
    simulate(document)
    setup_fleet(runtime, document)
    [(gateway_id, token, slot)] = started(runtime)
    runtime.clock = lambda: slot + 2_900
    result = pipeline.poll_batch(runtime, [(gateway_id, token, slot)])
    assert result.outcomes == {Outcome.OK: 1}
    assert result.successors == [(gateway_id, token, slot + 60_000)]
    assert [(r.slot_at, r.outcome) for r in poll_rows(runtime)] == [(ms_to_dt(slot), "ok")]


def test_a_gateway_deleted_during_a_batch_costs_the_others_nothing(runtime, simulate, free_ports):
    document = fleet(free_ports(3), [1.0, 1.0, 1.0], ALL_TYPES[:1])  # one request each
    sim = simulate(document, latency_ms=300)
    setup_fleet(runtime, document)
    with runtime.sessions() as session:
        ids = {g.config.name: g.id for g in load_gateways(session)}
    steps = started(runtime)
    with ThreadPoolExecutor(1) as pool:
        batch = pool.submit(pipeline.poll_batch, runtime, steps)
        deadline = time.monotonic() + 5
        while sim.traffic.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.005)  # until a read is served (the simulator has no event for it)
        assert sim.traffic.in_flight > 0
        with runtime.sessions() as session, session.begin():
            delete_gateway(session, "gw1")  # after `stop`'s wait passed, as it can
        result = batch.result(15)
    assert result.outcomes == {Outcome.OK: 3}
    assert {g for g, _, _ in result.successors} >= {ids["gw0"], ids["gw2"]}
    assert sorted((r.gateway_id, r.outcome, r.error) for r in poll_rows(runtime)) == [
        (ids["gw0"], "ok", None),
        (ids["gw2"], "ok", None),
    ]
    assert len(reading_rows(runtime)) == 2
    [letter] = runtime.buffer.dead()
    assert letter.entry["record"]["gateway_id"] == ids["gw1"]


def test_failures_count_per_gateway_beside_a_healthy_one(runtime, simulate, free_ports):
    """Each gateway's count is its own: a neighbour's success in the same batch does not
    reset it (threshold 3)."""
    document = fleet(free_ports(3), [1.0, 1.0, 1.0], ALL_TYPES[:1])
    simulate({"gateways": document["gateways"][:1]})  # gw1 and gw2: nothing listens
    setup_fleet(runtime, document)
    steps = started(runtime)
    for _ in range(3):
        # Begun on time for the earliest slot (each poll then waits for its own): begun
        # after the latest, the others would be up to an interval late, and shed.
        now = min(slot for _, _, slot in steps)
        runtime.clock = lambda now=now: now + 10
        steps = pipeline.poll_batch(runtime, steps).successors
    with runtime.sessions() as session:
        state = {
            g.name: (g.enabled, g.consecutive_failures) for g in session.scalars(select(GatewayRow))
        }
    assert state == {"gw0": (True, 0), "gw1": (False, 3), "gw2": (False, 3)}
