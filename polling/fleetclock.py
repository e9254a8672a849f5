"""The fleet's one clock: Redis's (TIME), carried forward between measurements by this
process's monotonic clock. Every slot decision (due, claim, late, gap, restart) is taken
on it, so hosts whose own clocks disagree, or a clock stepped mid-run, still agree on which
slot is which. The host's own clock is only compared with it (the skew, in heartbeats and
`validate`)."""

from __future__ import annotations

import logging
import threading
import time

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

#: How often the offset is measured again on use (the monotonic clock drifts by ppm).
REFRESH_NS = 30 * 1_000_000_000
#: Round trips to Redis per measurement; the shortest one's reading is used.
SAMPLES = 3
#: Skew (ms) from which validate warns.
SKEW_WARNING_MS = 500


class FleetClock:
    """A callable returning the fleet's time in ms since the epoch."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._guard = threading.Lock()
        self._base_ms: int | None = None  # Redis's time at `_base_mono`
        self._base_mono = 0
        self.skew_ms: int | None = None  # this host's clock minus Redis's, last measured

    def __call__(self) -> int:
        mono = time.monotonic_ns()
        if self._base_ms is None or mono - self._base_mono > REFRESH_NS:
            self.measure()
        if self._base_ms is None:  # Redis never answered: this host's clock, unchecked
            return time.time_ns() // 1_000_000
        return self._base_ms + (time.monotonic_ns() - self._base_mono) // 1_000_000

    def measure(self) -> int | None:
        """Read Redis's clock now; returns the skew (ms), or None if Redis did not answer
        (the last measurement then goes on being used). Of `SAMPLES` round trips the
        shortest is kept: a reply's time is placed at the round trip's middle, so the
        estimate is off by up to half of it, and on a loaded host (this process's other
        threads holding the GIL) one round trip can take tens of milliseconds."""
        with self._guard:
            best: tuple[int, int, int, int] | None = None  # rtt, mono, wall, redis ms
            for _ in range(SAMPLES):
                try:
                    before, wall_before = time.monotonic_ns(), time.time_ns()
                    seconds, micros = self._redis.time()
                    after, wall_after = time.monotonic_ns(), time.time_ns()
                except RedisError as exc:
                    log.warning("Redis's clock not read (%s): keeping the last measurement", exc)
                    return self.skew_ms
                redis_ms = int(seconds) * 1000 + int(micros) // 1000
                if best is None or after - before < best[0]:
                    mid_wall = (wall_before + wall_after) // 2_000_000
                    best = (after - before, (before + after) // 2, mid_wall, redis_ms)
            assert best is not None
            _, self._base_mono, wall_ms, self._base_ms = best
            self.skew_ms = wall_ms - self._base_ms
            return self.skew_ms

    def within(self, bound_s: float) -> bool:
        """This host's clock is within `bound_s` of Redis's (or was never measured)."""
        return self.skew_ms is None or abs(self.skew_ms) <= bound_s * 1000


def describe(skew_ms: int) -> str:
    return f"{abs(skew_ms) / 1000:.1f} s {'ahead of' if skew_ms > 0 else 'behind'} Redis's"
