"""Request plans that learn: a device with holes in its register map refuses merged reads
with exception 2; the poll splits them down to what answers, every worker then polls by
the learnt plan, and `pollctl gateway replan` (or the daily retry) tries the full plan."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from polling import configcache, learnedplan, pipeline, planstore, service
from polling.gateways import Point
from polling.learnedplan import LearnedPlan, Split, apply, halves, unneeded
from polling.outcome import Outcome
from polling.plan import Request, plan_requests
from tests.test_batch import started
from tests.test_e2e import wait_until
from tests.test_service import poll_rows, reading_rows, setup_fleet

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _points(*addresses: int) -> list[Point]:
    return [Point(f"p{a}", "holding", a) for a in addresses]


def test_halves_split_between_points_and_cover_only_their_points():
    (request,) = plan_requests(_points(0, 1, 2, 5, 6, 9), default_device_id=1)
    assert (request.address, request.count) == (0, 10)
    left, right = halves(request)
    assert (left.address, left.count, [p.name for p in left.points]) == (0, 3, ["p0", "p1", "p2"])
    assert (right.address, right.count, [p.name for p in right.points]) == (
        5,
        5,
        ["p5", "p6", "p9"],
    )


def test_unneeded_lists_the_runs_no_point_needs():
    (request,) = plan_requests(_points(0, 1, 2, 5, 6, 9), default_device_id=1)
    assert unneeded(request) == [(3, 4), (7, 8)]


@pytest.mark.parametrize(
    ("basis", "spans", "expected"),
    [
        # No learnt plan for this configuration: the full plan.
        ("other", ((1, "holding", 0, 3),), [(0, 10)]),
        # The learnt spans, each with the points inside it; the unavailable one left out.
        ("b", ((1, "holding", 0, 3), (1, "holding", 5, 1), (1, "holding", 6, 1)), None),
    ],
)
def test_apply_uses_a_learnt_plan_only_for_its_own_configuration(basis, spans, expected):
    points = _points(0, 1, 2, 5, 6, 9)
    full = plan_requests(points, default_device_id=1)
    learned = LearnedPlan(basis, spans, ("p9",))
    requests, unavailable = apply(full, learned, "b", 1)
    if expected is not None:
        assert [(r.address, r.count) for r in requests] == expected and unavailable == ()
        return
    assert [(r.address, r.count, [p.name for p in r.points]) for r in requests] == [
        (0, 3, ["p0", "p1", "p2"]),
        (5, 1, ["p5"]),
        (6, 1, ["p6"]),
    ]
    assert [p.name for p in unavailable] == ["p9"]


def test_learn_keeps_known_unavailable_points_and_the_first_retry_time():
    points = _points(0, 1, 2, 5, 6, 9)
    full = plan_requests(points, default_device_id=1)
    first = learnedplan.learn(None, "b", full, Split((), tuple(full), (points[5],), full), T0)
    assert first.retry_at == T0 + learnedplan.RETRY_AFTER and first.unavailable == ("p9",)
    assert "still to split" in first.events[-1][1]
    part = Request(1, "holding", 5, 2, tuple(points[3:5]))
    later = T0 + timedelta(seconds=5)
    second = learnedplan.learn(first, "b", full, Split((part,), (), (), (part,)), later)
    assert second.unavailable == ("p9",)  # still known
    assert second.retry_at == first.retry_at  # the daily retry counts from the first
    assert second.spans == ((1, "holding", 5, 2),)
    assert len(second.events) == 2
    again = learnedplan.reset(second, later, "replan")
    assert again.spans is None and again.unavailable == () and len(again.events) == 3


def test_a_buffered_plan_round_trips_and_never_replaces_a_newer_one(runtime, simulate, free_ports):
    (port,) = free_ports(1)
    _sim, gateway = _holey(runtime, simulate, port)
    points = _points(0, 1, 2, 5, 6, 9)
    full = plan_requests(points, default_device_id=1)
    learnt = learnedplan.learn(None, "b", full, Split((), tuple(full), (points[5],), full), T0)
    item = json.loads(json.dumps(planstore.to_json(gateway.id, learnt)))
    assert planstore.from_json(item) == (gateway.id, learnt)
    # Replanned since (a newer event): the plan buffered during the outage is not saved.
    replanned = learnedplan.reset(learnt, T0 + timedelta(minutes=1), "replan")
    with runtime.sessions() as session, session.begin():
        planstore.save(session, [(gateway.id, replanned)])
    with runtime.sessions() as session, session.begin():
        planstore.save(session, [planstore.from_json(item)], newer_only=True)
    assert _plan_of(runtime, gateway.id) == replanned


# -- polls against a simulated device with holes -----------------------------------------

HOLEY_POINTS = [
    {"name": "p0", "address": 0, "type": "uint16"},
    {"name": "p1", "address": 1, "type": "uint16"},
    {"name": "p2", "address": 2, "type": "uint16"},
    {"name": "p5", "address": 5, "type": "uint16"},
    {"name": "p6", "address": 6, "type": "uint16"},
    {"name": "p9", "address": 9, "type": "uint16"},
    {"name": "i0", "register": "input", "address": 0, "type": "uint16"},
]
#: Address 3 lies between points (only the merged read reaches it); 9 is p9's own.
HOLES = {"holding": {3, 9}}
#: The plan learnt for HOLEY_POINTS on a device with HOLES: p9 unavailable, p5 and p6 apart.
LEARNT_SPANS = (
    (1, "holding", 0, 3),
    (1, "holding", 5, 1),
    (1, "holding", 6, 1),
    (1, "input", 0, 1),
)


def _holey(runtime, simulate, port, interval: float = 1.0, timeout: float = 1.0):
    document = {
        "gateways": [
            {
                "name": "holey",
                "host": "127.0.0.1",
                "port": port,
                "interval": interval,
                "timeout": timeout,
                "points": HOLEY_POINTS,
            }
        ]
    }
    sim = simulate(document, holes={(port, 1): HOLES})
    return sim, setup_fleet(runtime, document)["holey"]


def _plan_of(runtime, gateway_id):
    with runtime.sessions() as session:
        return planstore.load(session, [gateway_id]).get(gateway_id)


def test_validate_warns_when_a_learnt_plan_outgrew_its_interval(runtime, simulate, free_ports):
    """The full plan's 2 requests fit a 5 s interval (budget 3.5 s at a 1 s timeout); the
    learnt plan's 4 do not (5.5 s): a slow device could run one poll into the next."""
    from polling.checks.base import Context
    from polling.checks.plans import check_learnt_plans

    (port,) = free_ports(1)
    _holey(runtime, simulate, port, interval=5.0)
    assert check_learnt_plans(Context(runtime)).status == "healthy"
    assert service.poll_now(runtime, "holey").outcome == "ok"
    result = check_learnt_plans(Context(runtime))
    assert result.status == "warning"
    assert result.message == (
        "1 learnt request plans outgrew their interval: "
        "holey (4 requests, budget 5.5 s, interval 5 s)"
    )


def test_a_refused_read_is_split_and_the_next_poll_uses_the_learnt_plan(
    runtime, simulate, free_ports
):
    (port,) = free_ports(1)
    sim, gateway = _holey(runtime, simulate, port)
    steps = started(runtime)
    first = pipeline.poll_batch(runtime, steps)
    # The poll succeeds with every point the device has; p9 is unavailable, not a failure.
    assert first.outcomes == {Outcome.OK: 1}
    assert sorted(r.point for r in reading_rows(runtime)) == ["i0", "p0", "p1", "p2", "p5", "p6"]
    plan = _plan_of(runtime, gateway.id)
    assert plan is not None and plan.unavailable == ("p9",)
    assert plan.spans == LEARNT_SPANS
    assert "holding 0..9 of device 1" in plan.events[-1][1]
    refused_first = len(sim.traffic.refused)
    assert refused_first == 5  # 0..9 merged, then alone; 5..9, 6..9 and 9 alone
    reads_first = len(sim.traffic.reads)

    # The next poll (this worker reloads, as every other would: the stamp changed).
    second = pipeline.poll_batch(runtime, first.successors)
    assert second.outcomes == {Outcome.OK: 1}
    assert len(sim.traffic.refused) == refused_first  # nothing refused any more
    assert len(sim.traffic.reads) - reads_first == 4  # one read per learnt request
    rows = poll_rows(runtime)
    assert [r.outcome for r in rows] == ["ok", "ok"]
    assert len(reading_rows(runtime)) == 12

    # `gateway replan` drops it: the next poll reads the full plan and learns again.
    assert service.replan(runtime, "holey")
    assert _plan_of(runtime, gateway.id).spans is None
    third = pipeline.poll_batch(runtime, second.successors)
    assert third.outcomes == {Outcome.OK: 1}
    assert len(sim.traffic.refused) == 2 * refused_first
    again = _plan_of(runtime, gateway.id)
    assert again.spans == plan.spans
    assert [what.split(":")[0] for _, what in again.events] == [
        "refused (exception 2)",
        "full plan again",
        "refused (exception 2)",
    ]


def test_a_read_timing_out_mid_split_keeps_what_the_poll_had_learnt(runtime, simulate, free_ports):
    """The device misses one of the smaller reads (p5 alone, the split's fourth read): the
    poll fails on that timeout, but the splits it had proven (0..2 answers, 0..9 and 5..9
    are refused) are kept, so the next poll goes on from there instead of starting over."""
    (port,) = free_ports(1)
    sim, gateway = _holey(runtime, simulate, port, interval=0.5, timeout=0.3)
    sim.stall(port, 1, "holding", 5, 1, seconds=0.5)  # past the gateway's 0.3 s timeout
    first = pipeline.poll_batch(runtime, started(runtime))
    assert first.outcomes == {Outcome.FAILED: 1}
    assert "holding 5..5" in first.failed["holey"], first.failed
    assert [r.outcome for r in poll_rows(runtime)] == ["failed"]
    refused_first = [(a, n) for _, _, _, a, n in sim.traffic.refused]
    assert refused_first == [(0, 10), (0, 10), (5, 5)]  # merged, alone, its right half
    plan = _plan_of(runtime, gateway.id)
    assert plan is not None, "what the timed-out poll learnt was lost"
    assert plan.spans == (
        (1, "holding", 0, 3),
        (1, "holding", 5, 1),
        (1, "holding", 6, 4),
        (1, "input", 0, 1),
    )
    assert plan.unavailable == ()
    assert "interrupted" in plan.events[-1][1]

    # The next poll starts from the kept splits: 0..9 and 5..9 are never asked again.
    second = pipeline.poll_batch(runtime, first.successors)
    assert second.outcomes == {Outcome.OK: 1}, second.failed
    refused_second = [(a, n) for _, _, _, a, n in sim.traffic.refused][len(refused_first) :]
    assert refused_second == [(6, 4), (6, 4), (9, 1)]  # merged, alone, p9 alone
    plan = _plan_of(runtime, gateway.id)
    assert plan.unavailable == ("p9",)
    assert plan.spans == LEARNT_SPANS
    assert plan.retry_at == _plan_at_first(plan)
    rows = poll_rows(runtime)
    assert [r.outcome for r in rows] == ["failed", "ok"]
    got = {r.point for r in reading_rows(runtime) if r.slot_at == rows[-1].slot_at}
    assert got == {"p0", "p1", "p2", "p5", "p6", "i0"}


def _plan_at_first(plan: LearnedPlan):
    """The daily retry counts from the first poll that learnt, not the last."""
    return plan.events[0][0] + learnedplan.RETRY_AFTER


def test_a_plan_learnt_while_the_database_is_down_is_used_and_saved_once_it_is_back(
    runtime, simulate, free_ports, settings, env
):
    import cli
    from polling import saving
    from polling.db import make_engine, session_factory
    from polling.runtime import Runtime

    (port,) = free_ports(1)
    sim, gateway = _holey(runtime, simulate, port, interval=0.5, timeout=0.3)
    steps = started(runtime)
    configcache.gateways_for_poll(runtime, [gateway.id])  # this worker has read the gateway
    # The database goes away under the worker: its polls go on, their records buffered.
    up = runtime.sessions
    unreachable = make_engine("postgresql://nobody@127.0.0.1:1/none")
    runtime.sessions = session_factory(unreachable)
    try:
        first = pipeline.poll_batch(runtime, steps)
        assert first.outcomes == {Outcome.OK: 1}
        refused = len(sim.traffic.refused)
        assert refused == 5
        # Meanwhile the worker polls by what it learnt, from memory: nothing refused again.
        second = pipeline.poll_batch(runtime, first.successors)
        assert second.outcomes == {Outcome.OK: 1}
        assert len(sim.traffic.refused) == refused
    finally:
        runtime.sessions = up
        unreachable.dispose()
    assert _plan_of(runtime, gateway.id) is None  # not saved yet: the database was down

    # The database is back: the flush that writes the buffered records saves the plan too.
    saving.flush(runtime)
    assert [r.outcome for r in poll_rows(runtime)] == ["ok", "ok"]
    plan = _plan_of(runtime, gateway.id)
    assert plan is not None and plan.unavailable == ("p9",)
    assert plan.spans == LEARNT_SPANS
    # Any worker loads it (none learns it again), and `explain` shows it.
    other = Runtime.build(settings)
    try:
        target = configcache.gateways_for_poll(other, [gateway.id])[gateway.id]
        assert len(target.requests) == 4 and [p.name for p in target.unavailable] == ["p9"]
    finally:
        other.close()
    shown = CliRunner().invoke(cli.main, ["explain", "--gateway", "holey", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    found = json.loads(shown.output)
    assert found["plan"] == "learnt" and found["unavailable"] == ["p9"]


def test_a_worker_that_loaded_the_gateway_before_picks_up_the_learnt_plan(
    runtime, simulate, free_ports, settings
):
    from polling import configcache
    from polling.runtime import Runtime

    (port,) = free_ports(1)
    _sim, gateway = _holey(runtime, simulate, port)
    other = Runtime.build(settings)
    try:
        before = configcache.gateways_for_poll(other, [gateway.id])[gateway.id]
        assert len(before.requests) == 2  # the full plan: holding 0..9 and input 0
        pipeline.poll_batch(runtime, started(runtime))
        after = configcache.gateways_for_poll(other, [gateway.id])[gateway.id]
        assert len(after.requests) == 4 and [p.name for p in after.unavailable] == ["p9"]
        assert after.budget > before.budget  # four requests, each at its timeout
    finally:
        other.close()


def test_the_daily_retry_goes_back_to_the_full_plan(runtime, simulate, free_ports):
    (port,) = free_ports(1)
    _sim, gateway = _holey(runtime, simulate, port)
    pipeline.poll_batch(runtime, started(runtime))
    assert service.retry_full_plans(runtime) == 0  # not a day yet
    now = runtime.clock()
    runtime.clock = lambda: now + 86_400_000 + 1
    assert service.retry_full_plans(runtime) == 1
    plan = _plan_of(runtime, gateway.id)
    assert plan.spans is None and plan.events[-1][1] == "full plan again: daily retry"


def test_a_device_answering_nothing_fails_the_poll(runtime, simulate, free_ports):
    (port,) = free_ports(1)
    document = {
        "gateways": [
            {
                "name": "empty",
                "host": "127.0.0.1",
                "port": port,
                "interval": 1.0,
                "timeout": 1.0,
                "points": HOLEY_POINTS[:2],
            }
        ]
    }
    sim = simulate(document, holes={(port, 1): {"holding": {0, 1}}})
    setup_fleet(runtime, document)
    result = pipeline.poll_batch(runtime, started(runtime))
    assert result.outcomes == {Outcome.FAILED: 1}
    assert "exception 2 (illegal data address) reading holding 0..1" in result.failed["empty"]
    assert "no point answered" in result.failed["empty"]
    # Learnt: nothing to read. Its next poll fails at once, saying so, without a request.
    second = pipeline.poll_batch(runtime, result.successors)
    assert second.outcomes == {Outcome.FAILED: 1}
    assert "every point of empty is unavailable" in second.failed["empty"]
    assert len(sim.traffic.refused) == 4  # 0..1 merged and alone, then p0 and p1 alone


def test_explain_and_replan_commands(runtime, simulate, free_ports, env):
    import cli

    (port,) = free_ports(1)
    _holey(runtime, simulate, port)
    pipeline.poll_batch(runtime, started(runtime))
    runner = CliRunner()
    shown = runner.invoke(cli.main, ["explain", "--gateway", "holey"], env=env)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert any("holding" in line and "p0, p1, p2" in line for line in lines)
    assert "unavailable: p9" in shown.output
    assert "poll budget" in shown.output and "mean duration" in shown.output
    assert "refused (exception 2): holding 0..9 of device 1" in shown.output
    as_json = runner.invoke(cli.main, ["explain", "--gateway", "holey", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    found = json.loads(as_json.output)
    assert found["gateway"] == "holey" and found["plan"] == "learnt"
    assert found["requests"][0] == {
        "function": 3,
        "register": "holding",
        "device": 1,
        "first": 0,
        "count": 3,
        "points": ["p0", "p1", "p2"],
        "unneeded": [],
    }
    assert found["unavailable"] == ["p9"] and found["budget_s"] == 5.5
    assert found["learning"][0]["what"].startswith("refused (exception 2)")
    assert found["learning"][0]["at"].endswith("Z")
    status = runner.invoke(cli.main, ["status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)[0]["unavailable"] == ["p9"]
    detailed = runner.invoke(cli.main, ["status", "--detailed"], env=env)
    assert "unavailable: p9" in detailed.output
    replanned = runner.invoke(cli.main, ["gateway", "replan", "holey"], env=env)
    assert replanned.exit_code == 0, replanned.output
    assert "full plan" in replanned.output
    shown = runner.invoke(cli.main, ["explain", "--gateway", "holey"], env=env)
    assert "p0, p1, p2, p5, p6, p9" in shown.output
    unknown = runner.invoke(cli.main, ["explain", "--gateway", "nope"], env=env)
    assert unknown.exit_code != 0 and "nope" in unknown.output


# -- end to end: two worker processes, a device whose map changes under them ---------------


@pytest.mark.e2e
@pytest.mark.slow
def test_two_workers_learn_once_and_both_poll_by_the_learnt_plan(
    runtime,
    env,
    simulate,
    free_ports,
    processes,
    celery_app,
):
    from functools import partial

    from tests.processes import Worker
    from workers.senders import send_poll

    (port,) = free_ports(1)
    document = {
        "gateways": [
            {
                "name": "holey",
                "host": "127.0.0.1",
                "port": port,
                "interval": 0.5,
                "timeout": 0.5,
                "points": HOLEY_POINTS,
            }
        ]
    }
    sim = simulate(document)  # no holes yet
    setup_fleet(runtime, document)
    workers = [processes(Worker, env, f"worker{i}") for i in range(2)]
    for worker in workers:
        worker.wait_ready()

    def batches() -> list[int]:
        return [w.output().count("batch of 1 steps") for w in workers]

    service.start(runtime, partial(send_poll, celery_app))
    # Both workers poll the gateway by the full plan, and hold it in memory.
    wait_until(lambda: min(batches()) >= 2, 30, "both workers polling")
    sim.set_holes(port, 1, HOLES)  # the device's map changes under them
    holed_at, before = time.time(), batches()
    wait_until(
        lambda: min(n - b for n, b in zip(batches(), before, strict=True)) >= 3,
        30,
        "both workers polling after the map changed",
    )
    service.stop(runtime)
    # Learnt once: the merged read and its splits were refused once, by one poll; every
    # later poll, on either worker, read the learnt plan.
    assert len(sim.traffic.refused) == 5, list(sim.traffic.refused)
    rows = [r for r in poll_rows(runtime) if r.started_at.timestamp() > holed_at]
    assert rows and {r.outcome for r in rows} == {"ok"}, [(r.outcome, r.error) for r in rows]
    by_slot: dict = {}
    for reading in reading_rows(runtime):
        by_slot.setdefault(reading.slot_at, set()).add(reading.point)
    available = {"p0", "p1", "p2", "p5", "p6", "i0"}
    for row in rows:
        assert by_slot[row.slot_at] == available, row.slot_at
    assert _plan_of(runtime, runtime_gateway_id(runtime, "holey")).unavailable == ("p9",)


def runtime_gateway_id(runtime, name: str) -> int:
    return service.named_gateways(runtime, [name])[0].id


@pytest.mark.e2e
def test_splitting_past_the_poll_budget_goes_on_at_the_next_polls(runtime, simulate, free_ports):
    (port,) = free_ports(1)
    points = [{"name": f"r{a}", "address": a, "type": "uint16"} for a in range(48)]
    document = {
        "gateways": [
            {
                "name": "swiss",
                "host": "127.0.0.1",
                "port": port,
                "interval": 2.0,
                "timeout": 0.1,
                "points": points,
            }
        ]
    }
    # Every odd register is a hole: one merged read of 48, split down to single points.
    # Each answer takes 40 ms, so the 24 answers alone outlast a poll's 0.7 s budget.
    holes = {"holding": set(range(1, 48, 2))}
    sim = simulate(document, holes={(port, 1): holes}, latency_ms=40)
    gateway = setup_fleet(runtime, document)["swiss"]
    steps = started(runtime)
    refused, budgets = [], []
    for _ in range(8):
        # The budget of the plan this poll reads (a split plan has more requests).
        budgets.append(configcache.gateways_for_poll(runtime, [gateway.id])[gateway.id].budget)
        result = pipeline.poll_batch(runtime, steps)
        assert result.outcomes == {Outcome.OK: 1}, result.failed
        refused.append(len(sim.traffic.refused))
        steps = result.successors
        if len(refused) > 1 and refused[-1] == refused[-2]:
            break  # a poll with no refusal: learnt
    rows = poll_rows(runtime)
    assert len(rows) >= 3, "learnt in one poll: the budget did not bind"
    first = _plan_of(runtime, gateway.id)
    assert "still to split" in first.events[0][1]
    assert budgets[0] == pytest.approx(0.7)  # one request: 0.1 s twice, plus 0.5 s
    assert {row.outcome for row in rows} == {"ok"}  # none missed: each poll on time
    for row, budget in zip(rows, budgets, strict=True):  # each poll within its budget
        assert (row.finished_at - row.started_at).total_seconds() < budget
    assert refused[-1] == refused[-2], f"still refusing after {len(rows)} polls: {refused}"
    plan = _plan_of(runtime, gateway.id)
    assert sorted(plan.unavailable) == sorted(f"r{a}" for a in range(1, 48, 2))
    assert plan.spans == tuple((1, "holding", a, 1) for a in range(0, 48, 2))
    last = rows[-1]
    got = {r.point for r in reading_rows(runtime) if r.slot_at == last.slot_at}
    assert got == {f"r{a}" for a in range(0, 48, 2)}
