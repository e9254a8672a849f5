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


def test_messages_the_cli_sends_are_stamped_on_the_fleets_clock(env, runtime, tmp_path):
    """`pollctl start` on a host 30 s ahead: the chain steps it sends carry a sent-at on
    Redis's clock (queue ages would otherwise be off by the host's skew)."""
    import json
    import os
    import subprocess
    import sys

    from polling.gatewayfile import parse_gateways
    from polling.repository import import_gateways
    from tests.faketime import skewed
    from tests.fleet import fleet
    from tests.processes import ROOT
    from workers.broker import SENT_HEADER, queue_keys

    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(fleet([1], [1.0], [{"name": "a", "address": 0}])))
    command = [sys.executable, "-c", "from cli import main; main()", "start"]
    full_env = {**os.environ, **env, **skewed("+30s"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seconds, micros = runtime.redis.time()
    redis_now_ms = seconds * 1000 + micros // 1000
    [message] = [
        raw
        for key in queue_keys("polling", runtime.keys.broker)
        for raw in runtime.redis.lrange(key, 0, -1)
    ]
    sent_ms = json.loads(message)["headers"][SENT_HEADER]
    assert abs(sent_ms - redis_now_ms) < 5_000, (sent_ms - redis_now_ms) / 1000
