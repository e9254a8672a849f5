"""Chain steps, start, stop, reconcile and poll-now against real Redis, a real database
(SQLite and PostgreSQL) and simulated devices."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, update

from polling import pipeline, queries, saving, service
from polling.gatewayfile import parse_gateways
from polling.models import GatewayRow, PollLog, Reading
from polling.outcome import Outcome, PollKind
from polling.records import PollEntry, PollRecord
from polling.repository import (
    delete_gateway,
    import_gateways,
    load_gateways,
    set_polling_many,
)
from polling.schedule import Grid, ms_to_dt
from polling.simulator import current_tick, simulated_value
from tests.fleet import ALL_TYPES, fleet


class Sent:
    """Records what would have been enqueued (and to which site, in `sites`)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, int]] = []
        self.sites: dict[int, str] = {}
        self._lock = threading.Lock()

    def __call__(self, gateway_id: int, token: str, slot_ms: int, site: str = "default") -> None:
        with self._lock:
            self.calls.append((gateway_id, token, slot_ms))
            self.sites[gateway_id] = site


def setup_fleet(runtime, document):
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
    with runtime.sessions() as session:
        return {g.config.name: g for g in load_gateways(session)}


def poll_rows(runtime, kind="scheduled"):
    with runtime.sessions() as session:
        return list(
            session.scalars(select(PollLog).where(PollLog.kind == kind).order_by(PollLog.slot_at))
        )


def poll_step(runtime, gateway_id: int, token: str, slot: int) -> pipeline.BatchResult:
    """One chain step, as a batch of one."""
    return pipeline.poll_batch(runtime, [(gateway_id, token, slot)])


def poll_step_many(runtime, steps) -> pipeline.BatchResult:
    """The chains' steps as one batch."""
    return pipeline.poll_batch(runtime, [tuple(step) for step in steps])


def reading_rows(runtime):
    with runtime.sessions() as session:
        return list(session.scalars(select(Reading)))


@pytest.fixture
def one_gateway(runtime, simulate, free_ports):
    document = fleet(free_ports(1), [1.0])
    simulate(document)
    return setup_fleet(runtime, document)["gw0"]


def test_start_sends_one_first_task_per_enabled_gateway(runtime, free_ports):
    document = fleet(free_ports(3), [1, 2, 5])
    document["gateways"][2]["enabled"] = False
    setup_fleet(runtime, document)
    sent = Sent()
    report = service.start(runtime, sent)
    assert sorted(report.started) == ["gw0", "gw1"]
    assert report.skipped == {"gw2": "disabled in its configuration"}
    assert len(sent.calls) == 2
    again = service.start(runtime, sent)
    assert sorted(again.already) == ["gw0", "gw1"] and len(sent.calls) == 2


def test_a_chain_step_polls_decodes_records_and_advances(runtime, one_gateway):
    sent = Sent()
    service.start(runtime, sent, ["gw0"])
    [(gateway_id, token, slot)] = sent.calls
    before = current_tick(1.0)
    result = poll_step(runtime, gateway_id, token, slot)
    after = current_tick(1.0)
    assert result.outcomes == {Outcome.OK: 1}
    assert result.successors == [(gateway_id, token, slot + 1000)]
    [row] = poll_rows(runtime)
    assert (row.outcome, row.slot_at, row.error) == ("ok", ms_to_dt(slot), None)
    values = {r.point: (r.text if r.text is not None else r.value) for r in reading_rows(runtime)}
    assert set(values) == {p["name"] for p in ALL_TYPES}
    for point in one_gateway.config.points:
        expected = {simulated_value("gw0", point, t) for t in range(before, after + 1)}
        got = values[point.name]
        if isinstance(got, float) and not isinstance(next(iter(expected)), str):
            assert any(got == float(e) for e in expected), point.name
        else:
            assert got in {str(e) for e in expected}, point.name


def test_a_duplicated_message_polls_once(runtime, one_gateway):
    sent = Sent()
    service.start(runtime, sent, ["gw0"])
    [(gateway_id, token, slot)] = sent.calls
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: poll_step(runtime, gateway_id, token, slot), range(4)))
    outcomes = [o for r in results for o in r.outcomes.elements()]
    assert outcomes.count(Outcome.OK) == 1
    assert set(outcomes) <= {Outcome.OK, Outcome.DUPLICATE, Outcome.MOVED}
    assert len(poll_rows(runtime)) == 1
    assert len(reading_rows(runtime)) == len(ALL_TYPES)
    # The same message redelivered later finds the chain moved on.
    assert poll_step(runtime, gateway_id, token, slot).outcomes == {Outcome.MOVED: 1}


def test_stop_retires_the_token_so_queued_tasks_die(runtime, one_gateway):
    sent = Sent()
    service.start(runtime, sent, ["gw0"])
    [(gateway_id, token, slot)] = sent.calls
    service.stop(runtime, ["gw0"])
    assert poll_step(runtime, gateway_id, token, slot).outcomes == {Outcome.RETIRED: 1}
    service.start(runtime, sent, ["gw0"])
    assert poll_step(runtime, gateway_id, token, slot).outcomes == {Outcome.STALE: 1}
    assert poll_rows(runtime) == []


def test_a_task_started_after_its_slot_records_missed_and_moves_on(runtime, one_gateway):
    sent = Sent()
    service.start(runtime, sent, ["gw0"])
    [(gateway_id, token, slot)] = sent.calls
    runtime.clock = lambda: slot + 3500  # 3.5 intervals late
    result = poll_step(runtime, gateway_id, token, slot)
    assert result.successors == [(gateway_id, token, slot + 3000)]
    rows = poll_rows(runtime)
    assert [(r.slot_at, r.outcome) for r in rows] == [
        (ms_to_dt(slot + k * 1000), "missed") for k in range(3)
    ]


def test_failures_are_counted_and_disable_the_gateway(runtime, free_ports):
    [port] = free_ports(1)  # nothing listens there
    gateway = setup_fleet(runtime, fleet([port], [1.0]))["gw0"]
    sent = Sent()
    service.start(runtime, sent, ["gw0"])
    grid = Grid.for_gateway("gw0", 1.0)
    for _ in range(3):
        gateway_id, token, slot = sent.calls[-1]
        runtime.clock = lambda s=slot: s + 10
        result = poll_step(runtime, gateway_id, token, slot)
        for successor in result.successors:
            sent(*successor)
    rows = poll_rows(runtime)
    assert [r.outcome for r in rows] == ["failed"] * 3
    assert f"cannot connect to 127.0.0.1:{port}" in rows[0].error
    assert result.outcomes == {Outcome.RETIRED: 1} and result.successors == []
    with runtime.sessions() as session:
        [stored] = load_gateways(session, ["gw0"])
    assert not stored.enabled
    assert stored.disabled_reason.startswith("auto-disabled after 3 consecutive failed polls")
    assert runtime.chains.get(gateway.id) is None
    # Plain start leaves it alone; naming it re-enables it.
    runtime.clock = lambda: grid.start(grid.index(sent.calls[-1][2]) + 10)
    assert "gw0" in service.start(runtime, sent).skipped
    assert service.start(runtime, sent, ["gw0"]).started == ["gw0"]


def test_a_modbus_exception_is_a_failed_poll_with_its_code(runtime, simulate, free_ports):
    document = fleet(free_ports(1), [1.0], [{"name": "far", "address": 5000}])
    far_doc = fleet([document["gateways"][0]["port"]], [1.0], [{"name": "near", "address": 0}])
    simulate(far_doc)  # serves registers 0..128 only
    setup_fleet(runtime, document)
    sent = Sent()
    service.start(runtime, sent)
    result = poll_step(runtime, *sent.calls[0])
    assert result.outcomes == {Outcome.FAILED: 1}
    [row] = poll_rows(runtime)
    assert "exception 2 (illegal data address) reading holding 5000..5000 of device 1" in row.error


def test_reconcile_restarts_a_dead_chain_and_records_the_gap(runtime, one_gateway):
    sent = Sent()
    service.start(runtime, sent, ["gw0"])
    gateway_id, token, slot = sent.calls[0]
    [(_, _, next_slot)] = poll_step(runtime, gateway_id, token, slot).successors
    # The successor's message is lost (a killed worker held it): reconcile 10 s later.
    # The new chain starts at the next slot: slots 1 to 10 s, the one in progress
    # included, were not polled.
    runtime.clock = lambda: slot + 10_500
    report = service.reconcile(runtime, sent)
    assert report.restarted == ["gw0"] and report.missed == 10
    _, new_token, new_slot = sent.calls[-1]
    assert new_token != token and new_slot == slot + 11_000
    # The old chain's message, delivered at last, dies.
    assert poll_step(runtime, gateway_id, token, next_slot).outcomes == {Outcome.STALE: 1}
    outcomes = [r.outcome for r in poll_rows(runtime)]
    assert outcomes == ["ok"] + ["missed"] * 10


def test_a_five_hour_outage_is_recorded_whole_as_one_range(runtime, one_gateway):
    """18,000 slots at 1 s without a poll (longer than any cap): every one accounted for,
    in one row that status and the health window count slot by slot."""
    sent = Sent()
    service.start(runtime, sent, ["gw0"])
    gateway_id, token, slot = sent.calls[0]
    poll_step(runtime, gateway_id, token, slot)
    outage = 5 * 3600 * 1000
    runtime.clock = lambda: slot + outage + 500
    report = service.reconcile(runtime, sent)
    assert report.restarted == ["gw0"] and report.missed == 18_000
    assert sent.calls[-1][2] == slot + outage + 1000  # the next slot, no gap after the range
    # The dead chain's due slot is a row of its own (its poll may still be running, and its
    # record would replace the guess); the rest of the outage is one range.
    ok, due, gap = poll_rows(runtime)
    assert (ok.outcome, due.outcome, due.slots) == ("ok", "missed", 1)
    assert (gap.outcome, gap.slots) == ("missed", 17_999)
    assert (gap.slot_at, gap.last_slot_at) == (ms_to_dt(slot + 2000), ms_to_dt(slot + outage))
    with runtime.sessions() as session:
        [status] = queries.gateway_statuses(session, runtime.chains.all(), set())
        window = queries.window_stats(session, ms_to_dt(slot + outage - 3_600_000 + 1))
    assert (status.ok, status.missed) == (1, 18_000)
    assert window[gateway_id].outcomes == {"missed": 3600}
    # Redis loses the new chain too: the gap is taken from the range's end, not its start.
    runtime.chains.retire(gateway_id)
    runtime.clock = lambda: slot + outage + 3_500
    report = service.reconcile(runtime, sent)
    assert report.missed == 3 and len(poll_rows(runtime)) == 6  # slots +1 s to +3 s


def test_reconcile_starts_missing_and_retires_stray_chains(runtime, simulate, free_ports):
    document = fleet(free_ports(2), [1, 1])
    simulate(document)
    gateways = setup_fleet(runtime, document)
    sent = Sent()
    service.start(runtime, sent)
    runtime.redis.delete(runtime.keys.chain(gateways["gw0"].id))  # Redis lost it
    with runtime.sessions() as session, session.begin():
        set_polling_many(session, [gateways["gw1"].id], on=False)  # stopped behind our back
    report = service.reconcile(runtime, sent)
    assert report.started == ["gw0"] and report.retired == ["gw1"]
    assert runtime.chains.get(gateways["gw1"].id) is None


def test_a_long_gap_after_a_slot_recorded_but_not_advanced_is_recorded_whole(runtime, one_gateway):
    """A worker killed between writing a batch's records and advancing its chains: the
    chain's due slot is already recorded. The gap reconcile records starts there; the slot
    keeps its record and the rest of the gap is still one range, not dropped whole."""
    sent = Sent()
    service.start(runtime, sent, ["gw0"])
    gateway_id, _, slot = sent.calls[0]
    at = ms_to_dt(slot)
    record = PollRecord(gateway_id, slot, PollKind.SCHEDULED, Outcome.OK, at, at)
    assert saving.save(runtime, [PollEntry(record, [])]) == {}  # recorded, never advanced
    runtime.clock = lambda: slot + 200_500
    report = service.reconcile(runtime, sent)
    assert report.missed == 200
    ok, gap = poll_rows(runtime)
    assert (ok.outcome, ok.slot_at) == ("ok", at)
    assert (gap.slot_at, gap.last_slot_at, gap.slots) == (
        ms_to_dt(slot + 1000),
        ms_to_dt(slot + 200_000),
        200,
    )


def test_reconcile_past_its_budget_leaves_the_rest_to_the_next_run(
    runtime, simulate, free_ports, monkeypatch
):
    """A repair too big for one run is spread over several: each run starts a chunk under
    its lock, the next resumes from what is still missing; nothing started twice."""
    document = fleet(free_ports(3), [1, 1, 1])
    simulate(document)
    gateways = setup_fleet(runtime, document)
    with runtime.sessions() as session, session.begin():
        set_polling_many(session, [g.id for g in gateways.values()], on=True)
    monkeypatch.setattr(service, "RESTART_CHUNK", 1)
    monkeypatch.setattr(service, "RECONCILE_BUDGET_SECONDS", 0.0)
    sent = Sent()
    runs = [service.reconcile(runtime, sent) for _ in range(4)]
    assert [(len(r.started), r.deferred) for r in runs] == [(1, 2), (1, 1), (1, 0), (0, 0)]
    assert sorted(g for g, _, _ in sent.calls) == sorted(g.id for g in gateways.values())
    assert not runtime.redis.exists(runtime.keys.reconcile_lock)


def test_poll_now_is_recorded_as_manual_and_leaves_the_schedule_alone(runtime, one_gateway):
    outcome = service.poll_now(runtime, "gw0")
    assert outcome.outcome == "ok"
    assert {point.name for point, _ in outcome.values} == {p["name"] for p in ALL_TYPES}
    assert poll_rows(runtime) == []
    [manual] = poll_rows(runtime, kind="manual")
    assert manual.outcome == "ok"
    assert {r.kind for r in reading_rows(runtime)} == {"manual"}


def test_stop_waits_for_the_poll_in_flight(runtime, one_gateway):
    config = one_gateway.config
    lock = runtime.redis.lock(runtime.keys.endpoint_lock(config.host, config.port), timeout=5)
    assert lock.acquire()
    done = threading.Event()
    stopper = threading.Thread(target=lambda: (service.stop(runtime, ["gw0"]), done.set()))
    stopper.start()
    assert not done.wait(0.3)  # still waiting for the poll holding the lock
    lock.release()
    assert done.wait(5)
    stopper.join()


def test_delete_during_a_batch_waits_for_its_poll_behind_a_slower_neighbour(
    runtime, simulate, free_ports
):
    """gw0 answers at once but shares a batch with gw1, which takes 1.5 s: gw0's lock is
    held until the batch has recorded, longer than gw0's own budget. Deleting gw0 meanwhile
    waits for that, so its record is neither written after the delete nor refused."""
    document = fleet(free_ports(2), [2.0, 2.0], [{"name": "a", "address": 0}])
    fast, slow = document["gateways"]
    fast["timeout"], slow["timeout"] = 0.2, 1.9
    simulate({"gateways": [fast]})
    simulate({"gateways": [slow]}, latency_ms=1500)
    gateways = setup_fleet(runtime, document)
    sent = Sent()
    service.start(runtime, sent)
    batch = threading.Thread(target=poll_step_many, args=(runtime, sent.calls))
    batch.start()
    endpoint = runtime.keys.endpoint_lock("127.0.0.1", fast["port"])
    deadline = time.monotonic() + 5
    while not runtime.redis.exists(endpoint) and time.monotonic() < deadline:
        time.sleep(0.005)  # polling a key: no event to wait on across processes
    assert runtime.redis.exists(endpoint), "the batch never took gw0's lock"
    service.stop(runtime, ["gw0"])
    assert not batch.is_alive(), "stop returned while gw0's poll was still unrecorded"
    with runtime.sessions() as session, session.begin():
        delete_gateway(session, "gw0")
    batch.join()
    assert runtime.buffer.dead_count() == 0
    rows = poll_rows(runtime)
    assert [(r.gateway_id, r.outcome) for r in rows] == [(gateways["gw1"].id, "ok")]


def test_a_slow_device_times_out_into_a_failed_poll(runtime, simulate, free_ports):
    document = fleet(free_ports(1), [2.0], [{"name": "a", "address": 0}])
    document["gateways"][0]["timeout"] = 0.3
    simulate(document, latency_ms=800)
    setup_fleet(runtime, document)
    outcome = service.poll_now(runtime, "gw0")
    assert outcome.outcome == "failed"
    assert "no valid answer reading holding 0..0 of device 1" in outcome.error


def test_connections_are_reused_across_polls(runtime, one_gateway):
    service.poll_now(runtime, "gw0")
    [client] = runtime.modbus._clients.values()
    service.poll_now(runtime, "gw0")
    assert list(runtime.modbus._clients.values()) == [client] and client.connected


def test_poll_now_waits_for_the_endpoint_lock_then_skips(runtime, simulate, free_ports):
    document = fleet(free_ports(1), [1.0], [{"name": "a", "address": 0}])
    document["gateways"][0]["timeout"] = 0.2
    simulate(document)
    gateway = setup_fleet(runtime, document)["gw0"]
    key = runtime.keys.endpoint_lock("127.0.0.1", gateway.config.port)
    holder = runtime.redis.lock(key, timeout=5)
    assert holder.acquire()
    try:
        outcome = service.poll_now(runtime, "gw0")
    finally:
        holder.release()
    assert outcome.outcome == "skipped" and "busy: another poll held its lock" in outcome.error
    [manual] = poll_rows(runtime, kind="manual")
    assert manual.outcome == "skipped"


def test_after_redis_lost_everything_a_long_interval_slot_in_flight_is_not_polled_again(
    runtime, simulate, free_ports
):
    """A 60 s gateway starts in the slot in progress; Redis loses its state while that
    slot's poll is in flight: the chain reconcile starts waits for the next slot, so the
    device serves the slot once."""
    [port] = free_ports(1)
    document = fleet([port], [60.0], ALL_TYPES[:1])  # one request
    sim = simulate(document, latency_ms=500)
    gw = setup_fleet(runtime, document)["gw0"]
    slot = Grid.for_gateway("gw0", 60.0).containing(runtime.clock())
    runtime.clock = lambda: slot + 1_000  # early in the slot: a new chain would take it
    sent = Sent()
    service.start(runtime, sent, ["gw0"])
    assert sent.calls[-1][2] == slot
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(poll_step, runtime, *sent.calls[-1])
        deadline = time.monotonic() + 5
        while sim.traffic.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.005)  # until the read is served (the simulator has no event for it)
        assert sim.traffic.in_flight == 1
        for key in runtime.redis.scan_iter(match=f"{runtime.settings.key_prefix}:*"):
            runtime.redis.delete(key)  # Redis restarted without persistence
        report = service.reconcile(runtime, sent)
        in_flight.result(10)
    assert report.started == ["gw0"]
    _, token, first = sent.calls[-1]
    if first <= runtime.clock():
        poll_step(runtime, gw.id, token, first)
    served = [r for r in sim.traffic.reads if r[1] == port]
    assert len(served) == 1 and first == slot + 60_000


def test_reconcile_does_not_restart_a_chain_that_stop_just_retired(runtime, one_gateway):
    sent = Sent()
    service.start(runtime, sent, ["gw0"])
    service.reconcile(runtime, sent)  # its view of the fleet: gw0 active
    # A stop lands after that view was read: the flag off, the chain retired.
    with runtime.sessions() as session, session.begin():
        session.execute(update(GatewayRow).values(polling=False, updated_at=GatewayRow.updated_at))
    runtime.chains.retire(one_gateway.id)
    calls = len(sent.calls)
    report = service.reconcile(runtime, sent)
    assert report.started == [] and len(sent.calls) == calls
    assert runtime.chains.get(one_gateway.id) is None


def test_reconcile_restarts_a_chain_whose_next_slot_is_too_far_ahead(runtime, one_gateway):
    """A worker whose clock ran 20,000 s ahead moved the chain there (before the fleet
    clock): reconcile restarts it at the fleet's next slot instead of waiting."""
    sent = Sent()
    service.start(runtime, sent, ["gw0"])
    _, token, slot = sent.calls[-1]
    ahead = slot + 20_000_000
    runtime.chains.issue([(one_gateway.id, ahead, ahead - 1000)])
    before = runtime.clock()
    report = service.reconcile(runtime, sent)
    assert report.restarted == ["gw0"]
    _, new_token, first = sent.calls[-1]
    assert new_token != token and before < first <= runtime.clock() + 1000
    assert runtime.chains.get(one_gateway.id).due_ms == first
