"""Fleet-wide counters in Redis, written where records are saved and read by `/metrics`.

Every worker process and host adds to the same hashes (one pipeline per saved batch), so a
scrape sees the fleet, not one process's memory. Counters only grow; Redis losing them is
a counter reset, which Prometheus's `rate()` already handles.

    metrics:polls      "<gateway id>:<outcome>" -> scheduled slots recorded so
    metrics:duration   histogram of ok and failed polls' durations (seconds)
    metrics:lateness   histogram of how late polls started after their slot (seconds)
    metrics:dropped    steps dropped by a guard: stale, claimed (a copy held the slot), moved
    metrics:last_ok    gateway id -> ms of its newest ok poll's slot
    metrics:shed       gateway id -> slots shed (skipped: begun too late, polling/shedding.py)
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import redis
from redis.commands.core import Script

from .keys import Keys
from .outcome import Outcome, PollKind
from .records import Entry, MissedRun, PollRecord
from .redisio import as_text
from .schedule import dt_to_ms
from .shedding import is_shed

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the histograms' buckets; +Inf is implied.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: What a dropped step's outcome is called in `pollctl_steps_dropped_total{guard=...}`.
GUARDS = {Outcome.STALE: "stale", Outcome.DUPLICATE: "claimed", Outcome.MOVED: "moved"}


@dataclass
class _Observed:
    """Observations of one histogram in a batch: per bucket (stored apart, made cumulative
    when read), their sum and count."""

    bounds: tuple[float, ...]
    buckets: Counter[str] = field(default_factory=Counter)
    total: float = 0.0
    count: int = 0

    def add(self, value: float) -> None:
        value = max(0.0, value)
        self.buckets[next((str(b) for b in self.bounds if value <= b), "+Inf")] += 1
        self.total += value
        self.count += 1

    def write(self, pipe: redis.client.Pipeline, key: str) -> None:
        if not self.count:
            return
        for bucket, n in self.buckets.items():
            pipe.hincrby(key, bucket, n)
        pipe.hincrbyfloat(key, "sum", self.total)
        pipe.hincrby(key, "count", self.count)


@dataclass
class _Tally:
    """What one batch's records add to the counters."""

    polls: Counter[str] = field(default_factory=Counter)
    shed: Counter[int] = field(default_factory=Counter)
    durations: _Observed = field(default_factory=lambda: _Observed(DURATION_BUCKETS))
    lateness: _Observed = field(default_factory=lambda: _Observed(LATENESS_BUCKETS))
    last_ok: dict[int, int] = field(default_factory=dict)

    def add(self, record: PollRecord) -> None:
        self.polls[f"{record.gateway_id}:{record.outcome}"] += 1
        if record.outcome == Outcome.SKIPPED and is_shed(record.error):
            self.shed[record.gateway_id] += 1
        if record.outcome == Outcome.OK:
            held = self.last_ok.get(record.gateway_id, 0)
            self.last_ok[record.gateway_id] = max(held, record.slot_ms)
        if record.started_at is not None:
            started_ms = dt_to_ms(record.started_at)
            self.lateness.add((started_ms - record.slot_ms) / 1000)
            if record.finished_at is not None:
                self.durations.add((dt_to_ms(record.finished_at) - started_ms) / 1000)


def count_records(redis_client: redis.Redis, keys: Keys, entries: Sequence[Entry]) -> None:
    """Add the scheduled records of `entries` (as handed to the database or the buffer)."""
    tally = _Tally()
    for entry in entries:
        if isinstance(entry, MissedRun):
            tally.polls[f"{entry.gateway_id}:{Outcome.MISSED}"] += entry.count
        elif entry.record.kind == PollKind.SCHEDULED:
            tally.add(entry.record)
    if not tally.polls:
        return
    pipe = redis_client.pipeline(transaction=False)
    for field_name, n in tally.polls.items():
        pipe.hincrby(keys.metrics("polls"), field_name, n)
    for gateway_id, n in tally.shed.items():
        pipe.hincrby(keys.metrics("shed"), str(gateway_id), n)
    tally.durations.write(pipe, keys.metrics("duration"))
    tally.lateness.write(pipe, keys.metrics("lateness"))
    if tally.last_ok:
        # A late batch must not move a newer ok back: a max, in one script.
        pairs = [x for pair in tally.last_ok.items() for x in pair]
        _keep_max(redis_client)(keys=[keys.metrics("last_ok")], args=pairs, client=pipe)
    _execute(pipe)


def count_dropped(redis_client: redis.Redis, keys: Keys, outcomes: Mapping[Outcome, int]) -> None:
    """Add the steps a batch dropped at a guard (none in a healthy fleet: no round trip)."""
    dropped = {GUARDS[o]: n for o, n in outcomes.items() if o in GUARDS and n}
    if not dropped:
        return
    pipe = redis_client.pipeline(transaction=False)
    for guard, n in dropped.items():
        pipe.hincrby(keys.metrics("dropped"), guard, n)
    _execute(pipe)


def _execute(pipe: redis.client.Pipeline) -> None:
    # Counters are for watching, not for accounting: a broker hiccup must not cost the
    # batch its successors.
    try:
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("metrics counters not updated: %s", exc)


@functools.cache
def _keep_max(redis_client: redis.Redis) -> Script:
    """The script, registered once per client (not hashed again on every batch)."""
    return redis_client.register_script(_KEEP_MAX)


_KEEP_MAX = """
for i = 1, #ARGV, 2 do
  local held = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > held then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
"""


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Histogram:
    #: (upper bound, cumulative count), ending with ("+Inf", count).
    buckets: list[tuple[str, int]]
    total: float
    count: int


@dataclass(frozen=True)
class FleetCounters:
    #: (gateway id, outcome) -> slots recorded.
    polls: dict[tuple[int, str], int]
    duration: Histogram
    lateness: Histogram
    #: guard -> steps dropped.
    dropped: dict[str, int]
    #: gateway id -> ms of the newest ok slot.
    last_ok: dict[int, int]
    #: gateway id -> slots shed (recorded as skipped: begun too late after their slot).
    shed: dict[int, int] = field(default_factory=dict)


def read_counters(redis_client: redis.Redis, keys: Keys) -> FleetCounters:
    pipe = redis_client.pipeline(transaction=False)
    for name in ("polls", "duration", "lateness", "dropped", "last_ok", "shed"):
        pipe.hgetall(keys.metrics(name))
    polls, duration, lateness, dropped, last_ok, shed = (_text_map(h) for h in pipe.execute())
    counts = {}
    for field_name, n in polls.items():
        gateway_id, outcome = field_name.split(":", 1)
        counts[(int(gateway_id), outcome)] = int(n)
    return FleetCounters(
        polls=counts,
        duration=_histogram(duration, DURATION_BUCKETS),
        lateness=_histogram(lateness, LATENESS_BUCKETS),
        dropped={guard: int(dropped.get(guard, 0)) for guard in GUARDS.values()},
        last_ok={int(g): int(ms) for g, ms in last_ok.items()},
        shed={int(g): int(n) for g, n in shed.items()},
    )


def _histogram(stored: Mapping[str, str], bounds: Iterable[float]) -> Histogram:
    running = 0
    buckets = []
    for bound in [*map(str, bounds), "+Inf"]:
        running += int(stored.get(bound, 0))
        buckets.append((bound, running))
    return Histogram(buckets, float(stored.get("sum", 0)), int(stored.get("count", 0)))


def _text_map(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {as_text(k): as_text(v) for k, v in raw.items()}
