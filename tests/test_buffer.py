"""The buffer of records waiting for the database, against real Redis and a real database
(SQLite and PostgreSQL): a push is kept once, a flush writes what it can and puts aside
what the database refuses, and one bad entry stops nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy import func, select

from polling import saving, service
from polling.buffer import Lost, RecordBuffer
from polling.models import GatewayRow, PollLog, Reading
from polling.outcome import Outcome, PollKind
from polling.records import MissedRun, PollEntry, PollRecord, reading_row, to_json
from polling.repository import delete_gateway
from tests.faults.harness import RedisServer
from tests.fleet import fleet
from tests.test_service import Sent, poll_step, setup_fleet

SLOT = 1_700_000_000_000


def entry(gateway, slot_ms: int = SLOT, kind: PollKind = PollKind.SCHEDULED) -> dict:
    """A buffered ok poll of every point of `gateway`."""
    at = datetime.now(UTC)
    readings = [
        reading_row(gateway.id, point, 1.5, slot_ms, kind, at) for point in gateway.config.points
    ]
    record = PollRecord(gateway.id, slot_ms, kind, Outcome.OK, at, at)
    return to_json(PollEntry(record, readings))


def counts(runtime) -> tuple[int, int]:
    with runtime.sessions() as session:
        polls = session.scalar(select(func.count()).select_from(PollLog))
        readings = session.scalar(select(func.count()).select_from(Reading))
    return polls, readings


def test_a_push_retried_by_the_client_is_kept_once(runtime, free_ports):
    gw = setup_fleet(runtime, fleet(free_ports(1), [1.0]))["gw0"]
    first = entry(gw)
    assert runtime.buffer.push(first, runtime.clock())
    assert runtime.buffer.push(first, runtime.clock())  # the reply was lost: sent again
    assert runtime.buffer.pending() == 1
    assert saving.flush(runtime) == 1
    assert counts(runtime) == (1, len(gw.config.points))


def test_one_bad_entry_is_put_aside_and_the_rest_is_written(runtime, free_ports):
    gateways = setup_fleet(runtime, fleet(free_ports(3), [1.0, 1.0, 1.0]))
    gw0, gw1, doomed = gateways["gw0"], gateways["gw1"], gateways["gw2"]
    twice = entry(gw0, kind=PollKind.MANUAL)
    buffer = runtime.buffer
    buffer.push(entry(gw0, SLOT - 1000), runtime.clock())
    # The same entry twice in the list (pushed by a client that did not know of ids, or
    # again after a flush took the first): the readings must still go in once.
    buffer.redis.rpush(buffer.keys.buffer, *[json.dumps(twice)] * 2)
    buffer.push(entry(doomed), runtime.clock())
    buffer.redis.rpush(buffer.keys.buffer, b"\x00not json")
    buffer.push(to_json(MissedRun(gw1.id, SLOT, 2, 1000, "worker gone")), runtime.clock())
    with runtime.sessions() as session, session.begin():
        delete_gateway(session, "gw2")  # deleted while its record waited

    assert saving.flush(runtime) == 4
    assert buffer.pending() == 0
    polls, readings = counts(runtime)
    assert polls == 2 + 2 and readings == 2 * len(gw0.config.points)
    letters = buffer.dead()
    assert [x.entry["record"]["gateway_id"] for x in letters if isinstance(x.entry, dict)] == [
        doomed.id
    ]
    assert "ForeignKeyViolation" in letters[0].reason or "FOREIGN KEY" in letters[0].reason
    assert letters[1].entry == "\x00not json" and letters[1].reason == "not a JSON object"

    assert buffer.retry_dead() == 1  # the one that is an entry; the other stays aside
    assert saving.flush(runtime) == 0 and buffer.dead_count() == 2
    assert buffer.drop_dead() == 2 and buffer.dead_count() == 0


def test_a_bad_entry_does_not_stop_reconcile_from_restarting_a_dead_chain(runtime, free_ports):
    gateways = setup_fleet(runtime, fleet(free_ports(2), [1.0, 1.0]))
    sent = Sent()
    service.start(runtime, sent, ["gw0"])
    gateway_id, token, slot = sent.calls[0]
    runtime.buffer.push(entry(gateways["gw1"], slot - 5000), runtime.clock())
    with runtime.sessions() as session, session.begin():
        delete_gateway(session, "gw1")
    # gw0's successor is lost: reconcile 10 s later must restart it despite the bad entry.
    runtime.clock = lambda: slot + 10_500
    report = service.reconcile(runtime, sent)
    assert report.restarted == ["gw0"]
    assert runtime.buffer.pending() == 0 and runtime.buffer.dead_count() == 1
    assert poll_step(runtime, gateway_id, token, slot + 1000).outcomes == {Outcome.STALE: 1}
    # `start` of a named gateway flushes first too, and is not stopped either.
    runtime.buffer.push(entry(gateways["gw1"], slot - 4000), runtime.clock())
    service.stop(runtime, ["gw0"])
    assert service.start(runtime, sent, ["gw0"]).started == ["gw0"]
    assert runtime.buffer.dead_count() == 2


def test_a_flusher_that_lost_its_lock_trims_nothing(runtime, free_ports):
    gw = setup_fleet(runtime, fleet(free_ports(1), [1.0]))["gw0"]
    buffer = runtime.buffer
    for n in range(3):
        buffer.push(entry(gw, SLOT + n * 1000), runtime.clock())

    def slow_write(batch: list[dict]) -> dict[int, str]:
        # The lock expires mid-write and another flusher takes it.
        buffer.redis.set(buffer.keys.buffer_flush_lock, "another flusher")
        return {}

    done = buffer.flush(slow_write, runtime.clock)
    assert (done.written, buffer.pending()) == (0, 3)
    buffer.redis.delete(buffer.keys.buffer_flush_lock)
    assert saving.flush(runtime) == 3 and counts(runtime)[0] == 3


def test_failures_count_in_slot_order_not_in_write_order(runtime, free_ports):
    """Failures buffered during an outage and flushed after a newer success do not disable
    a gateway that is healthy now (threshold 3)."""
    gw = setup_fleet(runtime, fleet(free_ports(1), [1.0]))["gw0"]
    at = datetime.now(UTC)

    def failed(slot_ms: int) -> PollEntry:
        record = PollRecord(gw.id, slot_ms, PollKind.SCHEDULED, Outcome.FAILED, at, at, "timeout")
        return PollEntry(record, [])

    saving.save(
        runtime,
        [PollEntry(PollRecord(gw.id, SLOT + 9000, PollKind.SCHEDULED, Outcome.OK, at, at), [])],
    )
    for n in range(3):
        runtime.buffer.push(to_json(failed(SLOT + n * 1000)), runtime.clock())
    assert saving.flush(runtime) == 3
    assert state(runtime, gw.id) == (True, 0)
    # Three failures after the newest success do count.
    assert saving.save(runtime, [failed(SLOT + 10_000 + n * 1000) for n in range(3)])
    assert state(runtime, gw.id) == (False, 3)


def state(runtime, gateway_id: int) -> tuple[bool, int]:
    with runtime.sessions() as session:
        row = session.get(GatewayRow, gateway_id)
        return row.enabled, row.consecutive_failures


def test_pushes_refused_by_a_full_redis_are_counted_once_it_takes_writes(
    runtime, free_ports, tmp_path
):
    """Redis at `maxmemory` with `noeviction` refuses writes: a record that cannot be
    buffered is lost, but counted in the process and added to the lost count as soon as
    Redis takes writes again, so `validate` reports it."""
    gw = setup_fleet(runtime, fleet(free_ports(1), [1.0]))["gw0"]
    server = RedisServer(free_ports(1)[0], tmp_path / "full-redis").start()
    try:
        client = redis.Redis.from_url(server.url)
        buffer = RecordBuffer(client, runtime.keys, limit=1000)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", client.info("memory")["used_memory"] + 256 * 1024)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(10_000):  # fill it to the brim
                client.set(f"filler:{i}", "x" * 1024)
        assert not buffer.push(entry(gw, SLOT), 1000)
        assert not buffer.push(entry(gw, SLOT + 1000), 2000)
        assert buffer.unrecorded == 2
        client.config_set("maxmemory", 0)  # room again
        assert buffer.push(entry(gw, SLOT + 2000), 3000)
        assert buffer.unrecorded == 0
        assert buffer.lost() == Lost(2, 1000, 2000)
        assert buffer.pending() == 1
    finally:
        server.stop()
