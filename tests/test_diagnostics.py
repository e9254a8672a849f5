"""Diagnostics, repairs, audit and the database-outage buffer, against real Redis and
databases (workers and beat are stood in for by their heartbeats where a test needs one)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

from sqlalchemy import func, select

from polling import configcache, diagnostics, heartbeat, records, saving
from polling.audit import audit
from polling.chains import StepClaim
from polling.checks.base import Context
from polling.checks.fleet import check_failures, check_locks, check_schedules
from polling.checks.services import check_beat, check_queues, check_workers
from polling.gatewayfile import parse_gateways
from polling.models import PollLog, Reading
from polling.outcome import Outcome, PollKind
from polling.records import MissedRun, PollEntry, PollRecord, reading_row
from polling.repository import import_gateways
from polling.runtime import Runtime
from polling.service import start, stop
from tests.fleet import fleet
from workers.broker import RedisQueues
from workers.senders import send_batch, send_canary, send_poll

POINTS = [{"name": "a", "address": 0}]


def setup_fleet(runtime: Runtime, n: int = 2, start_chains: bool = True) -> list:
    """Gateways on closed ports (nothing here polls them), started with a recording enqueue."""
    document = fleet([1 + i for i in range(n)], [1.0] * n, POINTS)
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
    sent: list = []
    if start_chains:
        start(runtime, lambda *args: sent.append(args[:3]))  # the step, without its site
    return sent


def publish(runtime: Runtime, kind: str, name: str, **extra) -> None:
    info = heartbeat.this_process(name, runtime.settings, runtime.clock(), **extra)
    key = runtime.keys.worker(name) if kind == "worker" else runtime.keys.beat(name)
    heartbeat.publish(runtime.redis, key, info)


def test_missing_chains_are_an_error_that_the_fix_repairs(runtime):
    setup_fleet(runtime, 3)
    for gateway_id in runtime.chains.all():
        runtime.redis.delete(runtime.keys.chain(gateway_id))  # as a Redis restart leaves it
    sent: list = []
    ctx = Context(runtime, enqueue=lambda *a: sent.append(a))
    result = check_schedules(ctx)
    assert result.status == "error" and len(result.details["missing"]) == 3 and result.fixable
    diagnosis = diagnostics.diagnose(ctx, fix=True)
    [schedules] = [r for r in diagnosis.results if r.component == "schedules"]
    assert schedules.status == "healthy"
    assert len(diagnosis.repairs["schedules"]) == 3 and len(sent) == 3


def test_an_overdue_share_below_the_critical_one_only_degrades(runtime):
    setup_fleet(runtime, 4)
    runtime.settings = dataclasses.replace(runtime.settings, overdue_critical=0.5)
    [gid, *_] = sorted(runtime.chains.all())
    chain = runtime.chains.get(gid)
    runtime.chains.issue([(gid, chain.due_ms - 3_600_000, None)])  # due an hour ago: dead
    result = check_schedules(Context(runtime))
    assert result.status == "warning" and len(result.details["overdue"]) == 1


def test_orphaned_locks_and_claims_are_found_and_deleted(runtime):
    setup_fleet(runtime, 1)
    lock = runtime.keys.endpoint_lock("10.9.9.9", 502)
    forever = runtime.keys.endpoint_lock("127.0.0.1", 1)
    claim = runtime.keys.claim(999_999, 1000)
    runtime.redis.set(lock, "x", px=60_000)
    runtime.redis.set(forever, "x")  # a lock without expiry, as a crashed old release left
    runtime.redis.set(claim, "x", px=60_000)
    result = check_locks(Context(runtime))
    assert result.status == "warning"
    assert set(result.details["locks"]) == {lock, forever} and result.details["claims"] == [claim]
    diagnosis = diagnostics.diagnose(Context(runtime), fix=True)
    assert len(diagnosis.repairs["locks"]) == 3
    assert not runtime.redis.exists(lock, forever, claim)


def test_a_claim_of_a_known_gateway_that_never_expires_is_found(runtime):
    setup_fleet(runtime, 1)
    [gid] = runtime.chains.all()
    hour_ago = runtime.clock() - 3_600_000
    immortal = runtime.keys.claim(gid, hour_ago)  # set without expiry an hour ago
    expiring = runtime.keys.claim(gid, hour_ago + 1000)  # a redelivered step's, still timed
    runtime.redis.set(immortal, "x")
    runtime.redis.set(expiring, "x", px=60_000)
    result = check_locks(Context(runtime))
    assert result.status == "warning" and result.details["claims"] == [immortal]


def _poll(runtime, gateway_id: int, slot_ms: int, outcome: str) -> None:
    now = datetime.now(UTC)
    record = PollRecord(gateway_id, slot_ms, PollKind.SCHEDULED, Outcome(outcome), now, now)
    with runtime.sessions() as session, session.begin():
        records.record_polls(session, [PollEntry(record, [])], failure_threshold=1000)


def test_failure_rate_grades_health(runtime):
    setup_fleet(runtime, 1)
    [gid] = runtime.chains.all()
    base = runtime.clock() - 60_000
    for i in range(10):
        _poll(runtime, gid, base + i * 1000, "failed" if i < 3 else "ok")
    assert check_failures(Context(runtime)).status == "warning"  # 30 %
    for i in range(10, 15):
        _poll(runtime, gid, base + i * 1000, "failed")
    result = check_failures(Context(runtime))
    assert result.status == "error" and result.details["failure_rate"] == round(8 / 15, 4)
    assert result.details["failing"] == ["gw0"]


def test_workers_check_needs_a_heartbeat_and_a_returning_canary(runtime):
    [result] = check_workers(Context(runtime))
    assert result.status == "error" and "no live worker" in result.message
    publish(runtime, "worker", "w1@host", queues=("polling",), polls=True)
    runtime.settings = dataclasses.replace(runtime.settings, canary_timeout=0.3)
    sent: list = []
    [result] = check_workers(Context(runtime, canary=lambda nonce, ttl, site: sent.append(nonce)))
    assert result.status == "error" and "canary" in result.message and len(sent) == 1

    def answer(nonce: str, ttl: float, site: str) -> None:  # what the canary task does
        runtime.redis.rpush(runtime.keys.canary(nonce), "w1@host")

    [result] = check_workers(Context(runtime, canary=answer))
    assert result.status == "healthy" and result.details["canary_served_by"] == "w1@host"
    assert "site default: served by w1@host" in result.message


def test_beat_check_and_audit_count_beats(runtime):
    assert check_beat(Context(runtime)).status == "error"
    publish(runtime, "beat", "b1", active=True)
    publish(runtime, "beat", "b2", active=False)
    assert check_beat(Context(runtime)).status == "healthy"
    [beats] = [f for f in audit(Context(runtime)).results if f.component == "beats"]
    assert beats.status == "warning" and len(beats.details["beats"]) == 2


def test_queue_backlog_is_graded_by_the_age_of_the_oldest_message(runtime, celery_app):
    send_canary(celery_app, "nobody-consumes-this", 60)
    queues = RedisQueues(runtime.redis, runtime.keys.broker)
    assert check_queues(Context(runtime, queues=queues)).status == "healthy"
    later = runtime.clock() + 60_000
    runtime.clock = lambda: later
    result = check_queues(Context(runtime, queues=queues))
    assert result.status == "error" and result.details["polling"]["waiting"] == 1
    assert result.details["polling"]["oldest_age_s"] >= 59


def test_audit_finds_other_code_and_stale_messages_and_removes_the_waiting_ones(
    runtime, celery_app
):
    setup_fleet(runtime, 1)
    publish(runtime, "worker", "old@host", queues=("polling",), polls=True)
    runtime.redis.set(
        runtime.keys.worker("old@host"),
        json.dumps(
            {
                **json.loads(runtime.redis.get(runtime.keys.worker("old@host"))),
                "version": "0.0.1+deadbeef",
            }
        ),
        px=10_000,
    )
    [(gid, chain)] = runtime.chains.all().items()
    send_poll(celery_app, gid, "a-replaced-token", chain.due_ms)
    send_poll(celery_app, 424242, "whatever", chain.due_ms)
    ctx = Context(runtime, queues=RedisQueues(runtime.redis, runtime.keys.broker))
    result = audit(ctx)
    found = {f.component: f for f in result.results}
    assert found["worker-versions"].status == "error"
    assert found["messages"].details == {
        "unknown_gateway": 1,
        "replaced_chain": 1,
        "held_by_workers": 0,
    }
    fixed = audit(ctx, fix=True)
    assert {f.component: f.status for f in fixed.results}["messages"] == "healthy"
    assert runtime.redis.llen(f"{runtime.keys.broker}polling") == 0


def test_after_a_normal_stop_audit_is_clean_and_only_keys_that_never_expire_are_findings(
    runtime,
):
    setup_fleet(runtime, 2)
    (gid, chain), (other, _) = runtime.chains.all().items()
    # A poll claimed its slot (with the TTL every claim gets), then the fleet was stopped.
    runtime.chains.begin([StepClaim(gid, chain.token, chain.due_ms, 600_000)], [])
    stop(runtime)
    runtime.clock = lambda: chain.due_ms + 5_000  # the slot has ended
    keys = {f.component: f for f in audit(Context(runtime)).results}["keys"]
    assert keys.status == "healthy", keys
    assert keys.details["expiring_claims"] == 1
    # A claim that never expires (an old release, a hand-made key) is a finding.
    runtime.redis.set(runtime.keys.claim(other, chain.due_ms), "x")
    keys = {f.component: f for f in audit(Context(runtime)).results}["keys"]
    assert keys.status == "warning" and keys.details["claims"] == [
        runtime.keys.claim(other, chain.due_ms)
    ]


def test_records_go_to_the_buffer_while_the_database_is_down_and_flush_in_order(runtime, settings):
    setup_fleet(runtime, 1)
    [gid] = runtime.chains.all()
    down = Runtime.build(
        dataclasses.replace(settings, database_url="postgresql://nobody@127.0.0.1:1/none")
    )
    slots = [runtime.clock() - 10_000 + i * 1000 for i in range(5)]
    point = parse_gateways(fleet([1], [1.0], POINTS))[0].points[0]
    now = datetime.now(UTC)
    for slot in slots:
        record = PollRecord(gid, slot, PollKind.SCHEDULED, Outcome.OK, now, now, None)
        row = reading_row(gid, point, float(slot % 1000), slot, PollKind.SCHEDULED, now)
        assert saving.save(down, [PollEntry(record, [row])]) == {}
    saving.save(down, [MissedRun.one(gid, slots[-1] + 1000, 1000, "test")])
    assert runtime.buffer.pending() == 6
    result = diagnostics.diagnose(Context(runtime), fix=True)
    assert result.repairs["buffer"] == ["wrote 6 buffered records to the database"]
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(PollLog)) == 6
        assert session.scalar(select(func.count()).select_from(Reading)) == 5
    assert saving.flush(runtime) == 0
    down.close()


def test_past_the_bound_records_are_counted_as_lost(runtime, settings):
    down = Runtime.build(
        dataclasses.replace(
            settings, database_url="postgresql://nobody@127.0.0.1:1/none", buffer_limit=2
        )
    )
    for slot in range(4):
        saving.save(down, [MissedRun.one(1, slot * 1000, 1000, "test")])
    assert down.buffer.pending() == 2 and down.buffer.lost().count == 2
    [buffer] = [
        r for r in diagnostics.diagnose(Context(runtime)).results if r.component == "buffer"
    ]
    assert buffer.status == "error" and "2 poll records lost" in buffer.message
    down.close()


def test_a_second_record_of_a_slot_is_refused_counted_and_reported(runtime):
    """The unique key keeps one record per slot; one that differs from what the slot holds
    (a second poll, or a poll of a slot written as missed) is counted, a replay is not."""
    setup_fleet(runtime, 1)
    [gid] = runtime.chains.all()
    slot = runtime.clock() - 5000
    started = datetime.now(UTC)
    first = PollRecord(gid, slot, PollKind.SCHEDULED, Outcome.OK, started, started, None)
    assert saving.save(runtime, [PollEntry(first, [])]) == {}
    saving.save(runtime, [PollEntry(first, [])])  # the same record again: a replay
    [records_check] = [
        r for r in diagnostics.diagnose(Context(runtime)).results if r.component == "records"
    ]
    assert records_check.status == "healthy"

    later = started.replace(microsecond=(started.microsecond + 500_000) % 1_000_000)
    second = dataclasses.replace(first, started_at=later, finished_at=later)
    saving.save(runtime, [PollEntry(second, [])])
    saving.save(runtime, [MissedRun.one(gid, slot, 1000, "restart")])  # a gap over it: kept
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(PollLog)) == 1
    [records_check] = [
        r for r in diagnostics.diagnose(Context(runtime)).results if r.component == "records"
    ]
    assert records_check.status == "warning", records_check
    assert records_check.details["slot_conflicts"] == {"gw0": 1}
    assert runtime.buffer.dead_count() == 0


def test_a_batch_names_its_gateways_and_slots_for_flower_under_the_broker_prefix(
    runtime, celery_app
):
    """Kombu's keys live under POLLING_KEY_PREFIX too (two installations on one Redis do
    not share queues), and a poll batch's `argsrepr` names each gateway and slot."""
    sent = setup_fleet(runtime, 2)
    configcache.fleet(runtime)  # what a reconcile or start has read
    send_batch(celery_app, [tuple(step) for step in sent], configcache.names(runtime))
    [raw] = runtime.redis.lrange(f"{runtime.keys.broker}polling", 0, -1)
    assert not runtime.redis.exists("polling")
    shown = json.loads(raw)["headers"]["argsrepr"]
    (_, _, slot0), (_, _, slot1) = sent
    assert shown == (
        f"gw0 {datetime.fromtimestamp(slot0 / 1000, UTC):%H:%M:%S.%f}"[:-3]
        + f", gw1 {datetime.fromtimestamp(slot1 / 1000, UTC):%H:%M:%S.%f}"[:-3]
    )


def test_a_poll_in_flight_when_its_slot_was_written_as_missed_replaces_the_guess(runtime):
    """Redis lost the chain while a poll ran: reconcile wrote the slot as missed (the
    chain looked dead), then the poll's record arrived. The device served it once; the
    record is the poll's, with its readings, and no conflict is counted."""
    setup_fleet(runtime, 1)
    [gid] = runtime.chains.all()
    slot = runtime.clock() - 400_000
    saving.save(runtime, [MissedRun(gid, slot, 300, 1000, "no poll ran: the chain had died")])
    point = parse_gateways(fleet([1], [1.0], POINTS))[0].points[0]
    at = datetime.now(UTC)
    record = PollRecord(gid, slot, PollKind.SCHEDULED, Outcome.OK, at, at, None)
    reading = reading_row(gid, point, 21.5, slot, PollKind.SCHEDULED, at)
    assert saving.save(runtime, [PollEntry(record, [reading])]) == {}
    with runtime.sessions() as session:
        rows = session.scalars(select(PollLog).order_by(PollLog.slot_at)).all()
        assert [(r.outcome, r.slots) for r in rows] == [("ok", 1), ("missed", 299)]
        assert session.scalar(select(func.count()).select_from(Reading)) == 1
    [records_check] = [
        r for r in diagnostics.diagnose(Context(runtime)).results if r.component == "records"
    ]
    assert records_check.status == "healthy"


def test_a_database_that_refuses_the_login_is_not_told_to_start(settings):
    # A wrong database name, role or password was "start the database": it was running.
    from polling.checks.services import check_database_service
    from tests.conftest import PG_SERVER

    for url in (
        PG_SERVER.rsplit("/", 1)[0] + "/pollctl_no_such_db",
        "postgresql://nobody@127.0.0.1:5432/postgres",
    ):
        rt = Runtime.build(dataclasses.replace(settings, database_url=url))
        try:
            result = check_database_service(Context(rt))
        finally:
            rt.close()
        assert result.status == "error", result
        assert result.recommendations == [
            "check POLLING_DATABASE_URL: the server answers but refuses its user, password or "
            "database"
        ], result
