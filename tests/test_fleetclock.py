"""The fleet clock against real Redis, with this host's clock skewed by libfaketime in a
child process (Debian's `faketime`, installed by .ci/run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis

from polling.fleetclock import FleetClock
from tests.conftest import REDIS_URL
from tests.faketime import skewed

#: Measures in a child whose wall clock is skewed: the skew, the fleet time, its own time.
PROBE = """
import json, sys, time, redis
from polling.fleetclock import FleetClock
clock = FleetClock(redis.Redis.from_url(sys.argv[1]))
skew = clock.measure()
print(json.dumps({"skew": skew, "fleet": clock(), "own": time.time_ns() // 1_000_000}))
"""


def redis_ms() -> int:
    seconds, micros = redis.Redis.from_url(REDIS_URL).time()
    return int(seconds) * 1000 + int(micros) // 1000


def probe(offset: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, REDIS_URL],
        env={**os.environ, **skewed(offset)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def test_a_skewed_host_measures_its_skew_and_keeps_the_fleet_time():
    for offset, skew in (("+30s", 30_000), ("-30s", -30_000)):
        before = redis_ms()
        seen = probe(offset)
        after = redis_ms()
        assert abs(seen["skew"] - skew) < 1000, seen
        assert before <= seen["fleet"] <= after + 50, (before, seen, after)
        assert abs(seen["own"] - seen["fleet"] - skew) < 1000


def test_the_fleet_clock_follows_redis_here():
    clock = FleetClock(redis.Redis.from_url(REDIS_URL))
    before = redis_ms()
    now = clock()
    assert before - 50 <= now <= redis_ms() + 50
    assert abs(clock.skew_ms or 0) < 500 and clock.within(0.5)
