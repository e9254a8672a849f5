"""Bare Celery on a Redis broker (`bench.noop`): no-op tasks drained by a prefork and by a
threads pool, and self-rescheduling chains on a threads pool, their phases spread over the
interval or all on one. Database 13 of the broker is flushed before and after each run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import redis

from .analyze import percentiles
from .micro import Micro, Processes
from .noop import LATENESS, noop, send
from .procstats import redis_cpu, tree_cpu

#: Celery's default queue, and the hash where kombu's Redis transport keeps a message
#: between its delivery to a worker and its acknowledgement.
QUEUE = "celery"
UNACKED = "unacked"


def _worker(
    processes: Processes, name: str, pool: str, concurrency: int
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "celery", "-A", "bench.noop", "worker", "--pool", pool]
    args += ["--concurrency", str(concurrency), "-n", f"{name}@micro"]
    args += ["--without-gossip", "--without-mingle", "--loglevel", "WARNING"]
    return processes.spawn(name, args)


def _left(client: redis.Redis) -> int:
    """Messages not acknowledged yet: queued, or delivered to a worker and unacked."""
    pipe = client.pipeline(transaction=False)
    pipe.llen(QUEUE)
    pipe.hlen(UNACKED)
    queued, unacked = pipe.execute()
    return int(queued) + int(unacked)


def _wait(
    done: Callable[[], bool], worker: subprocess.Popen[bytes], timeout: float, step: float
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}; see its log")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker did not get there within {timeout:g} s")
        time.sleep(step)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def run_noop(
    processes: Processes, client: redis.Redis, *, pool: str, concurrency: int, tasks: int = 3000
) -> Micro:
    """Enqueue `tasks` no-ops, start a worker, and time the drain from the first message the
    worker takes (its start-up excluded) until every message is acknowledged."""
    client.flushdb()
    cpu = time.process_time()
    for _ in range(tasks):
        noop.apply_async()
    enqueue = time.process_time() - cpu
    if _left(client) != tasks:
        raise RuntimeError(f"{_left(client)} messages queued, {tasks} sent")
    worker = _worker(processes, f"noop-{pool}", pool, concurrency)
    try:
        _wait(lambda: _left(client) < tasks, worker, 60, 0.002)
        left = _left(client)
        wall, worker_cpu, broker_cpu = time.perf_counter(), tree_cpu(worker.pid), redis_cpu(client)
        _wait(lambda: _left(client) == 0, worker, 120, 0.01)
        seconds = time.perf_counter() - wall
        worker_cpu, broker_cpu = tree_cpu(worker.pid) - worker_cpu, redis_cpu(client) - broker_cpu
    finally:
        processes.stop(worker)
        client.flushdb()
    return Micro(
        name=f"celery noop {pool} x{concurrency}",
        ops=left,
        seconds=round(seconds, 3),
        rate=round(left / seconds, 1),
        cpu_ms={
            "enqueue": round(enqueue * 1000 / tasks, 4),
            "worker": round(worker_cpu * 1000 / left, 4),
            "redis": round(broker_cpu * 1000 / left, 4),
        },
    )


def _records(client: redis.Redis, start_ms: int, end_ms: int) -> list[tuple[int, int, float]]:
    """(chain, slot_ms, lateness_ms) of the runs whose slot is in [start_ms, end_ms)."""
    out = []
    for entry in client.lrange(LATENESS, 0, -1):
        index, slot, late = entry.split()
        if start_ms <= int(slot) < end_ms:
            out.append((int(index), int(slot), float(late)))
    return out


def run_chains(
    processes: Processes,
    client: redis.Redis,
    *,
    same_phase: bool,
    chains: int = 500,
    interval: float = 2.0,
    warmup: float = 6.0,
    seconds: float = 20.0,
    concurrency: int = 32,
    straggle: float = 10.0,
) -> Micro:
    """`chains` chains every `interval` s on a threads pool; lateness, duplicates and missed
    slots of the slots in the `seconds` after `warmup`. Spread, chain i's phase is
    i * interval / chains; same phase, every chain runs on the same slots. A run still
    missing `straggle` s after the window counts as missed."""
    client.flushdb()
    worker = _worker(processes, "chain-threads", "threads", concurrency)
    interval_ms = round(interval * 1000)
    try:
        noop.apply_async()  # acknowledged once the worker consumes: then its clock starts
        _wait(lambda: _left(client) == 0, worker, 60, 0.05)
        first = _now_ms() + 500
        start, end = first + round(warmup * 1000), first + round((warmup + seconds) * 1000)
        phases = [0 if same_phase else i * interval_ms // chains for i in range(chains)]
        for i, phase in enumerate(phases):
            send(i, first + phase, interval_ms, end)
        _wait(lambda: _now_ms() >= start, worker, warmup + 5, 0.05)
        worker_cpu, broker_cpu = tree_cpu(worker.pid), redis_cpu(client)
        _wait(lambda: _now_ms() >= end, worker, seconds + 5, 0.05)
        worker_cpu, broker_cpu = tree_cpu(worker.pid) - worker_cpu, redis_cpu(client) - broker_cpu
        # Every run sent (to the last slot before `end`) has run, or a lagging worker had
        # `straggle` s more: what is still missing then counts as missed.
        total = sum(len(range(first + phase, end, interval_ms)) for phase in phases)
        deadline = end + round(straggle * 1000)
        _wait(
            lambda: client.llen(LATENESS) >= total or _now_ms() >= deadline,
            worker,
            straggle + 5,
            0.05,
        )
        runs = _records(client, start, end)
    finally:
        processes.stop(worker)
        client.flushdb()
    expected = {
        (i, slot)
        for i, phase in enumerate(phases)
        for slot in range(first + phase, end, interval_ms)
        if slot >= start
    }
    ran = {(i, slot) for i, slot, _ in runs}
    return Micro(
        name=f"chains x{chains} {'one phase' if same_phase else 'spread'}",
        ops=len(runs),
        seconds=seconds,
        rate=round(len(runs) / seconds, 1),
        cpu_ms={
            "worker": round(worker_cpu * 1000 / max(1, len(runs)), 4),
            "redis": round(broker_cpu * 1000 / max(1, len(runs)), 4),
        },
        lateness_ms={k: round(v, 2) for k, v in percentiles([r[2] for r in runs]).items()},
        duplicates=len(runs) - len(ran),
        missed=len(expected - ran),
    )
