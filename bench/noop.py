"""The Celery app of the microbenchmarks: a no-op task, and a bare chain task that records
its lateness and sends itself again for its next slot. No result backend.

    celery -A bench.noop worker --pool threads --concurrency 32

Its broker is database 13 of BENCH_REDIS (default redis://127.0.0.1:6379), which the
microbenchmarks flush; the enqueuing process and the worker both read it from here.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from functools import cache

import redis
from celery import Celery

BROKER = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379") + "/13"
#: A list of "chain slot_ms lateness_ms", one entry per chain execution.
LATENESS = "micro:lateness"

app = Celery("noop", broker=BROKER)
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(BROKER)


@app.task(name="noop.noop")
def noop() -> None:
    """Nothing: what a task costs by itself."""


@app.task(name="noop.chain")
def chain(index: int, slot_ms: int, interval_ms: int, until_ms: int) -> None:
    """Record how late this run started after its slot (ms since the epoch), then send the
    chain's next run for `slot_ms + interval_ms`, unless that is at or past `until_ms`."""
    lateness_ms = time.time() * 1000 - slot_ms
    _redis().rpush(LATENESS, f"{index} {slot_ms} {lateness_ms:.3f}")
    following = slot_ms + interval_ms
    if following < until_ms:
        send(index, following, interval_ms, until_ms)


def send(index: int, slot_ms: int, interval_ms: int, until_ms: int) -> None:
    """Send chain `index`'s run of `slot_ms`, due then (ms since the epoch)."""
    chain.apply_async(
        (index, slot_ms, interval_ms, until_ms), eta=datetime.fromtimestamp(slot_ms / 1000, UTC)
    )
