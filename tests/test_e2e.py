"""The whole pipeline: simulated gateways, real Celery worker and beat processes, real Redis,
SQLite and PostgreSQL. Given a fleet, when it runs (and when its worker dies), then every
slot is accounted for once and each reading holds the value the device served."""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime
from functools import partial

import pytest
import redis
from sqlalchemy import select

from polling import service
from polling.gatewayfile import parse_gateways
from polling.keys import Keys
from polling.models import GatewayRow, PollLog, Reading
from polling.repository import import_gateways
from polling.schedule import Grid, dt_to_ms
from polling.settings import Settings
from polling.simulator import simulated_value
from tests.fleet import fleet
from tests.processes import Beat, Worker
from workers.app import create_app
from workers.senders import send_canary, send_poll

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RUN_SECONDS = 22
INTERVALS = [0.5, 1.0, 1.5, 2.0]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout} s")
        time.sleep(0.2)


def load_record(runtime):
    with runtime.sessions() as session:
        names = dict(session.execute(select(GatewayRow.id, GatewayRow.name)).all())
        polls = list(session.scalars(select(PollLog).where(PollLog.kind == "scheduled")))
        readings = list(session.scalars(select(Reading).where(Reading.kind == "scheduled")))
    return names, polls, readings


def check_record(runtime, document) -> tuple[dict[str, Counter], dict[str, list]]:
    """Per gateway, from its first slot to its last: every slot once, readings only for
    polled slots, one per point, each the simulator's value at the time of the read.
    Returns the outcome counts and the rows that were not ok, per gateway."""
    gateways = {g.name: g for g in parse_gateways(document)}
    names, polls, readings = load_record(runtime)
    polls_by_gateway = defaultdict(list)
    for poll in polls:
        polls_by_gateway[names[poll.gateway_id]].append(poll)
    readings_by_slot = defaultdict(list)
    for reading in readings:
        readings_by_slot[(names[reading.gateway_id], dt_to_ms(reading.slot_at))].append(reading)
    outcomes = {}
    problems = {}
    for name, gateway in gateways.items():
        grid = Grid.for_gateway(name, gateway.interval)
        rows = sorted(polls_by_gateway[name], key=lambda p: p.slot_at)
        slots = [dt_to_ms(p.slot_at) for p in rows]
        assert len(slots) == len(set(slots)), f"{name}: a slot polled twice"
        assert all(grid.is_slot(s) for s in slots)
        expected = list(range(slots[0], slots[-1] + 1, grid.interval_ms))
        assert slots == expected, f"{name}: slots missing: {sorted(set(expected) - set(slots))}"
        for poll in rows:
            got = readings_by_slot.pop((name, dt_to_ms(poll.slot_at)), [])
            if poll.outcome != "ok":
                assert got == [], f"{name}: readings for a {poll.outcome} slot"
                continue
            assert sorted(r.point for r in got) == sorted(p.name for p in gateway.points)
            _check_values(name, gateway, poll, got)
        outcomes[name] = Counter(p.outcome for p in rows)
        problems[name] = [(p.slot_at, p.outcome, p.error) for p in rows if p.outcome != "ok"]
    assert not readings_by_slot, f"readings without a poll-log row: {sorted(readings_by_slot)}"
    return outcomes, problems


def _check_values(name, gateway, poll, readings) -> None:
    points = {p.name: p for p in gateway.points}
    first_tick = int(poll.started_at.timestamp())
    for reading in readings:
        point = points[reading.point]
        last_tick = int(reading.read_at.timestamp())
        candidates = {simulated_value(name, point, t) for t in range(first_tick, last_tick + 1)}
        got = reading.text if reading.text is not None else reading.value
        wanted = {str(c) if isinstance(got, str) else float(c) for c in candidates}
        assert got in wanted, f"{name}.{reading.point} = {got!r}, device served {candidates}"


def lateness(runtime) -> str:
    """Start of each poll minus the start of its slot, for the report; each chain's first
    poll is left out (a new chain may start up to half an interval into its first slot)."""
    _, polls, _ = load_record(runtime)
    first: dict[int, datetime] = {}
    for p in polls:
        first[p.gateway_id] = min(first.get(p.gateway_id, p.slot_at), p.slot_at)
    late = sorted(
        (p.started_at - p.slot_at).total_seconds() * 1000
        for p in polls
        if p.started_at and p.slot_at != first[p.gateway_id]
    )

    def pick(q: float) -> float:
        return late[min(len(late) - 1, int(q * len(late)))]

    return f"lateness p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, max {late[-1]:.1f} ms"


def setup(runtime, simulate, free_ports, **sim):
    document = fleet(free_ports(len(INTERVALS)), INTERVALS)
    simulate(document, **sim)
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
    return document


def test_fleet_is_polled_once_per_slot_with_no_gaps(
    runtime, env, simulate, free_ports, processes, celery_app
):
    document = setup(runtime, simulate, free_ports)
    worker = processes(Worker, env, "worker")
    processes(Beat, env, "beat")
    worker.wait_ready()
    service.start(runtime, partial(send_poll, celery_app))
    time.sleep(RUN_SECONDS)  # the run under test, not a synchronisation
    service.stop(runtime)
    outcomes, problems = check_record(runtime, document)
    for name, interval in zip(outcomes, INTERVALS, strict=True):
        assert set(outcomes[name]) == {"ok"}, f"{name}: {problems[name]}"
        assert outcomes[name]["ok"] >= RUN_SECONDS / interval - 2
    total = sum(c["ok"] for c in outcomes.values())
    rate = total / RUN_SECONDS
    print(f"\n{total} polls in {RUN_SECONDS} s ({rate:.1f}/s), no gaps; {lateness(runtime)}")


@pytest.mark.long  # fault rows 1a, 1b and 2a kill workers too; this keeps make test short
def test_worker_killed_mid_run_leaves_no_duplicates_and_records_the_gap(
    runtime, env, simulate, free_ports, processes, celery_app
):
    # Slow devices, so the kill lands while reads are in flight.
    document = setup(runtime, simulate, free_ports, latency_ms=60)
    worker = processes(Worker, env, "worker")
    processes(Beat, env, "beat")
    worker.wait_ready()
    service.start(runtime, partial(send_poll, celery_app))
    time.sleep(6)
    worker.kill()
    killed_at = time.time()
    time.sleep(3)  # the worker stays dead for a while
    worker = processes(Worker, env, "worker2")
    worker.wait_ready()

    def every_gateway_polled_since_restart() -> bool:
        _, polls, _ = load_record(runtime)
        recovered = {
            p.gateway_id
            for p in polls
            if p.outcome == "ok" and p.started_at and p.started_at.timestamp() > killed_at + 3
        }
        return len(recovered) == len(INTERVALS)

    wait_until(every_gateway_polled_since_restart, 40, "polling back on every gateway")
    time.sleep(4)
    service.stop(runtime)
    outcomes, _ = check_record(runtime, document)
    assert sum(c["missed"] for c in outcomes.values()) > 0, outcomes
    assert all(set(c) <= {"ok", "missed", "failed", "skipped"} for c in outcomes.values())
    print(f"\nafter SIGKILL: {dict(outcomes)}")


def test_two_beats_one_sends_and_the_other_takes_over(tmp_path, processes):
    from tests.conftest import REDIS_URL

    env = {"POLLING_REDIS_URL": REDIS_URL, "POLLING_KEY_PREFIX": f"beat{time.time_ns()}"}
    first, second = processes(Beat, env, "beat1"), processes(Beat, env, "beat2")

    def said(beat: Beat, words: str) -> bool:
        return words in beat.output()

    wait_until(lambda: said(first, "beat active") or said(second, "beat active"), 30, "a beat")
    active, standby = (first, second) if said(first, "beat active") else (second, first)
    wait_until(lambda: said(standby, "on standby"), 15, "the other beat standing by")
    assert not said(standby, "beat active")
    active.kill()
    wait_until(lambda: said(standby, "beat active"), 20, "the standby beat taking over")


def test_a_message_of_the_removed_single_step_task_is_logged_and_dropped(tmp_path, processes):
    # `pollctl.poll` messages of the release before poll batches may still be queued when
    # workers are upgraded: each is dropped with a log line and the worker goes on (the
    # chain it carried is restarted by reconcile, its gap recorded).
    from tests.conftest import REDIS_URL

    settings = Settings(redis_url=REDIS_URL, key_prefix=f"old{time.time_ns()}")
    env = {"POLLING_REDIS_URL": REDIS_URL, "POLLING_KEY_PREFIX": settings.key_prefix}
    env["POLLING_DATABASE_URL"] = f"sqlite:///{tmp_path / 'pollctl.db'}"
    app = create_app(settings)
    worker = processes(Worker, env, "worker")
    worker.wait_ready()
    app.send_task("pollctl.poll", (1, "a-token-of-the-old-release", 0), queue="polling")
    nonce = uuid.uuid4().hex
    send_canary(app, nonce, 30)  # queued behind it: answered only once the old message is gone
    client = redis.Redis.from_url(REDIS_URL)
    assert client.blpop([Keys(settings.key_prefix).canary(nonce)], timeout=30) is not None
    assert "Received unregistered task of type 'pollctl.poll'" in worker.output()
    assert worker.proc.poll() is None
    assert client.llen(f"{Keys(settings.key_prefix).broker}polling") == 0
