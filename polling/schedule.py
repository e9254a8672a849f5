"""Slot arithmetic: pure functions over integer milliseconds since the epoch.

A gateway with interval I and anchor A has slots [A + kI, A + (k+1)I). Integers keep
fractional intervals exact: 0.1 s is 100 ms, and slot starts never drift.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime


def now_ms() -> int:
    """This host's clock, in ms since the epoch."""
    return time.time_ns() // 1_000_000


def to_ms(seconds: float) -> int:
    return round(seconds * 1000)


def ms_to_dt(ms: int) -> datetime:
    """A slot start (ms since the epoch) as the database keeps it: an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def dt_to_ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


def anchor_for(name: str, interval_ms: int) -> int:
    """A stable phase in [0, interval) so gateways with one interval do not fire together."""
    return zlib.crc32(name.encode()) % interval_ms


#: Shortest interval whose new chains poll the slot already in progress (see `starting`).
PROMPT_START_MIN_MS = 60_000


@dataclass(frozen=True)
class Grid:
    anchor_ms: int
    interval_ms: int

    @classmethod
    def for_gateway(cls, name: str, interval_s: float) -> Grid:
        interval_ms = to_ms(interval_s)
        return cls(anchor_for(name, interval_ms), interval_ms)

    def index(self, t_ms: int) -> int:
        """Number of the slot that contains `t_ms`."""
        return (t_ms - self.anchor_ms) // self.interval_ms

    def start(self, index: int) -> int:
        return self.anchor_ms + index * self.interval_ms

    def containing(self, t_ms: int) -> int:
        """Start of the slot that contains `t_ms`."""
        return self.start(self.index(t_ms))

    def is_slot(self, t_ms: int) -> bool:
        return (t_ms - self.anchor_ms) % self.interval_ms == 0

    def following(self, slot_ms: int, now_ms: int) -> int:
        """The slot to poll after `slot_ms`: the next one, or, when that has already
        ended by `now_ms`, the one in progress (never one that has passed)."""
        return max(slot_ms + self.interval_ms, self.containing(now_ms))

    def starting(self, now_ms: int, not_before_ms: int = 0) -> int:
        """First slot of a new chain: the next one. With a long interval (a minute or more)
        the slot in progress is taken while at most half of it has passed, so the first poll
        does not wait long. Short intervals never take it: starting a fleet would make half
        of its first polls due at once, a burst that leaves every slot after it late.
        Nor is it taken when it began before `not_before_ms` (when Redis's state began: a
        poll of it may be in flight under claims Redis lost)."""
        current = self.containing(now_ms)
        prompt = (
            self.interval_ms >= PROMPT_START_MIN_MS
            and now_ms - current <= self.interval_ms // 2
            and current >= not_before_ms
        )
        return current if prompt else current + self.interval_ms

    def between(self, after_ms: int, before_ms: int) -> tuple[int, int]:
        """The slots strictly between two slot starts, as (first, count); count 0 when
        none. A range, not a list: an outage of days at 1 s is hundreds of thousands."""
        first = after_ms + self.interval_ms
        return first, max(0, -(-(before_ms - first) // self.interval_ms))

    def ended(self, slot_ms: int, now_ms: int) -> bool:
        """True once the whole slot lies in the past: too late to poll it."""
        return now_ms >= slot_ms + self.interval_ms
