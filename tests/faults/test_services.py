"""Faults 3 and 4: Redis restarted (every queue, token and lock gone) with polls in flight,
Redis unreachable for 35 s, PostgreSQL unreachable for 60 s."""

from __future__ import annotations

import time

import pytest

from tests.faultproxy import FaultProxy
from tests.faults.fleets import document
from tests.faults.harness import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.slow]

LATENCY_MS = 120
#: A worker's consumer tries the broker again at most 2 s after its last try
#: (workers/consumer.py), whatever the outage's length, and a try takes well under 1 s.
RECONNECT = 3.0
#: Redis away this long: Celery's own pauses (2, 4, 6, ... s) try at 30 s and 42 s, so it
#: would come back 7 s after the outage.
OUTAGE_S = 35


@pytest.fixture
def proxies():
    started: list[FaultProxy] = []

    def start(port: int) -> FaultProxy:
        proxy = FaultProxy(("127.0.0.1", port)).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def start_fleet(rig, free_ports, n: int = 4):
    doc = document(free_ports(n))
    sim = rig.simulate(doc, latency_ms=LATENCY_MS)
    rig.install(doc)
    rig.worker()
    rig.beat()
    rig.pollctl("start")
    started = time.time()
    wait_until(lambda: rig.polled_since(started), 15, "every gateway polled")
    time.sleep(3)
    return sim, started


def recovery_bound(rig) -> float:
    """From the end of the outage: the reconnect, then two intervals, one reconcile period
    and the overdue grace."""
    s = rig.settings
    return RECONNECT + 2 * 1.0 + s.reconcile_seconds + s.overdue_grace


@pytest.mark.long
def test_redis_restarted_with_polls_in_flight(rig_factory, redis_server, free_ports):
    rig = rig_factory()
    sim, started = start_fleet(rig, free_ports)
    wait_until(lambda: sim.traffic.in_flight > 0, 5, "a read in flight")
    redis_server.kill()
    redis_server.start()  # empty: no persistence
    back = time.time()
    wait_until(lambda: rig.polled_since(back), 40, "polling back on every gateway")
    time.sleep(3)
    rig.pollctl("stop")
    rig.check(
        "3a Redis restarted (all keys lost), polls in flight",
        started=started,
        stopped=time.time(),
        fault_end=back,
        bound=recovery_bound(rig),
    )


@pytest.mark.long
def test_redis_unreachable_for_35_seconds(rig_factory, redis_server, free_ports, proxies):
    proxy = proxies(redis_server.port)
    rig = rig_factory(redis_url=f"redis://127.0.0.1:{proxy.port}/0")
    _, started = start_fleet(rig, free_ports)
    proxy.set("refuse")
    time.sleep(OUTAGE_S)  # the outage under test
    proxy.set("pass")
    back = time.time()
    wait_until(lambda: rig.polled_since(back), 60, "polling back on every gateway")
    time.sleep(3)
    rig.pollctl("stop")
    row = rig.check(
        f"3b Redis unreachable {OUTAGE_S} s",
        started=started,
        stopped=time.time(),
        fault_end=back,
        bound=recovery_bound(rig),
    )
    assert row.missed >= 4 * (OUTAGE_S - 5)  # nothing can poll without Redis; the record says so


@pytest.mark.long
def test_postgresql_unreachable_for_60_seconds(rig_factory, free_ports, proxies):
    proxy = proxies(5432)
    rig = rig_factory(pg_port=proxy.port)
    _, started = start_fleet(rig, free_ports)
    proxy.set("refuse")
    down = time.time()
    time.sleep(60)  # the outage under test
    assert rig.runtime.buffer.pending() >= 4 * 50  # polls went on, into the buffer
    proxy.set("pass")
    back = time.time()
    wait_until(lambda: rig.runtime.buffer.pending() == 0, 30, "the buffer flushed")
    time.sleep(3)
    rig.pollctl("stop")
    row = rig.check(
        "4 PostgreSQL unreachable 60 s",
        started=started,
        stopped=time.time(),
        fault_end=back,
        bound=0.0,
    )
    record = rig.record()
    for name, rows in record.rows.items():
        during = [r for r in rows if down + 2 < r.slot_at.timestamp() < back - 2]
        assert len(during) >= 55 and all(r.outcome == "ok" for r in during), name
    assert row.missed == 0 and rig.runtime.buffer.lost().count == 0


def _a_long_interval_poll_reading(rig, ports: list[int]) -> float:
    """60 s gateways on slow devices (two requests: about 2 s a poll), started; returns
    the start time once a read is in flight."""
    doc = document(ports, interval=60.0, timeout=5.0)
    sim = rig.simulate(doc, latency_ms=1000)
    rig.install(doc)
    rig.worker()
    rig.beat()
    rig.pollctl("start")
    started = time.time()
    wait_until(lambda: sim.traffic.in_flight > 0, 70, "a read in flight")
    return started


def _next_slot_polled_once(rig, started: float, fault: str) -> None:
    """The next slot of each gateway polled by the chain reconcile started (60 s away at
    most), then stopped: the device saw one poll per slot."""
    back = time.time()
    wait_until(lambda: rig.polled_since(back + 1), 130, "the next slot polled on each gateway")
    rig.pollctl("stop")
    row = rig.check(fault, started=started, stopped=time.time())
    assert row.duplicates == 0


@pytest.mark.long
def test_redis_restarted_while_a_long_interval_poll_reads(rig_factory, redis_server, free_ports):
    """Finding 3: Redis loses everything while a 60 s gateway's poll is in flight (a slow
    device: the read takes 2 s). The restart's chain must not poll that slot again: the
    device sees one poll per slot, and the slot is recorded once."""
    rig = rig_factory()
    started = _a_long_interval_poll_reading(rig, free_ports(2))
    redis_server.kill()
    redis_server.start()  # empty: no persistence
    _next_slot_polled_once(rig, started, "3c Redis restarted while a 60 s gateway's poll reads")


@pytest.mark.long
def test_a_chain_lost_alone_while_its_long_interval_poll_reads(rig_factory, free_ports):
    """Finding 3, a partial rollback (AOF everysec, a failover to an async replica): one
    chain's keys are gone while its 60 s gateway's poll reads, and Redis's epoch is kept, so
    nothing says Redis restarted. Redis has been up an hour, so the slot in progress began
    after its epoch did. The device holds the read until reconcile has started a new
    chain, the order that broke it: before the fix that chain took the slot in progress
    and the device saw the slot polled twice. It must see one poll per slot."""
    rig = rig_factory()
    doc = document(free_ports(1), interval=60.0, timeout=20.0)
    sim = rig.simulate(doc)
    sim.hold()
    rig.install(doc)
    rt = rig.runtime
    rt.chains.epoch_born(int((time.time() - 3600) * 1000))  # Redis's state began an hour ago
    rig.worker()
    rig.beat()
    rig.pollctl("start")
    started = time.time()
    wait_until(lambda: sim.traffic.in_flight > 0, 70, "a read held at the device")
    [(gateway_id, chain)] = rt.chains.all().items()
    lost = [rt.keys.chain(gateway_id), rt.keys.claim(gateway_id, chain.due_ms)]
    rt.redis.delete(*lost, *rt.redis.keys(rt.keys.locks_pattern))
    rig.pollctl("reconcile")
    assert gateway_id in rt.chains.all(), "reconcile started a new chain"
    assert not rig.record().rows, "the held poll has not recorded yet"
    sim.release()
    _next_slot_polled_once(
        rig, started, "3d one chain lost (partial rollback) while its 60 s poll reads"
    )
