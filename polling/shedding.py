"""Overload shedding: which steps of a batch are not polled because the worker is behind.
No clock, no Redis: `Shedder` keeps one worker process's memory; tested by tables.

When the workers cannot keep up, the batches wait (in the broker, in the worker's pool) and
every poll would start late. Instead a step whose slot began more than its gateway's *late
limit* before its batch began is recorded as skipped, with a reason starting `shed: `, and
its chain goes on: the worker catches up, and the polls it does make stay on time. Before
that, from half the limit on, the worker sheds a share of its late steps rising with how
late they begin, each gateway in turn (`Shedder`), so the shortfall is spread evenly over
the gateways. Only the batch's own lateness counts: a poll waiting behind others for its
endpoint (five devices behind one bridge) was begun on time and is polled.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from .schedule import PROMPT_START_MIN_MS

#: How a shed slot's poll-log error begins: the poll log keeps the four outcomes, and this
#: tells a shed slot from one skipped because its endpoint was busy.
SHED_PREFIX = "shed: "
#: The level is averaged over about this long: more than a short interval, so the fleet's
#: rhythm within it evens out; short enough to follow an overload as it comes and goes.
LEVEL_WINDOW_MS = 2_000
#: Below this level nothing is shed in turn (a few late batches are no overload).
LEVEL_MIN = 0.05
#: Nor while the window holds fewer steps than this: a handful of steps (three gateways at
#: 1 s) is no evidence of overload, and one batch begun late on a busy box would shed its
#: neighbours' next slots. Past the limit a step is shed all the same.
LEVEL_MIN_STEPS = 20
#: A balance is kept within these: a gateway never owes more than one turn and is spared
#: at most two after its windows ran past the limit.
BALANCE_MAX = 1.5
BALANCE_MIN = -2.0


def late_limit_ms(interval_ms: int, limit_s: float, share: float) -> int | None:
    """A gateway's late limit: the larger of `limit_s` and `share` of its interval (300 ms
    late is worth polling on a 60 s gateway, not on a 2 s one); None when `limit_s` is 0
    (shedding off: polls run late until their slot ends), and for intervals of a minute or
    more: a start takes their slot in progress while half of it remains (`Grid.starting`),
    a first poll late on purpose that shedding would drop, and a late poll of such a
    gateway is still worth making."""
    if limit_s <= 0 or interval_ms >= PROMPT_START_MIN_MS:
        return None
    return max(round(limit_s * 1000), round(share * interval_ms))


@dataclass(frozen=True)
class Late:
    """What the rule needs of one step: its gateway and slot, its gateway's interval and
    late limit."""

    gateway_id: int
    slot_ms: int
    interval_ms: int
    limit_ms: int | None


def shed_reason(lateness_ms: int, limit_ms: int) -> str:
    return (
        f"{SHED_PREFIX}the worker began this poll {lateness_ms / 1000:.2f} s after its slot "
        f"(limit {limit_ms / 1000:.2f} s)"
    )


def turn_reason(lateness_ms: int, limit_ms: int, level: float) -> str:
    return (
        f"{SHED_PREFIX}the worker is behind and sheds {level:.0%} of late polls in turn; "
        f"this one began {lateness_ms / 1000:.2f} s after its slot (limit {limit_ms / 1000:.2f} s)"
    )


def first_balance(gateway_id: int) -> float:
    """Where a gateway's balance starts: a number in [0, 1) fixed for each gateway, so
    that gateways reach their first turn at different slots."""
    digest = hashlib.blake2b(str(gateway_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64


def shed_share(lateness_ms: int, limit_ms: int) -> float:
    """How far behind a step begun this late says the worker is, as a share of steps to
    shed: none up to a quarter of the limit, all from half of it, and in between a share
    rising with the lateness. The worker's level is its mean over its recent steps. Well
    short of the limit: where the level settles, the late windows of an interval still
    have room before the limit (with a ramp from half the limit to the limit, one gateway
    of 20 ran past it at every other slot and lost 1.8x the mean)."""
    start, end = limit_ms / 4, limit_ms / 2
    if lateness_ms <= start:
        return 0.0
    if lateness_ms > end:
        return 1.0
    return (lateness_ms - start) / (end - start)


class Shedder:
    """One worker process's shedding: its *level* (`shed_share` of its steps averaged over
    about the last `window_ms`) and each gateway's *balance*.

    Every step begun more than an eighth of its limit after its slot (the worker is behind
    now) adds the level to its gateway's balance; a step whose balance reaches 1 is shed
    (its turn) and pays 1. So each gateway is shed the level's
    share of its late slots, however late its own batches tend to begin. Shedding each
    step by its own lateness was not fair: the fleet's rhythm repeats every interval, the
    same windows began late slot after slot, and their gateways were shed twice the mean
    (20 gateways at 1.5 times what the worker could do). A step past its own late limit
    is shed whatever its balance, so the polls made stay on time, and pays too: a gateway
    whose windows run late is spared its next turns."""

    def __init__(self, window_ms: int = LEVEL_WINDOW_MS) -> None:
        self.window_ms = window_ms
        self._shares = 0.0
        self._steps = 0.0
        self._at_ms: int | None = None
        self._balance: dict[int, float] = {}
        # Thread pools run batches side by side in one process.
        self._lock = threading.Lock()

    @property
    def level(self) -> float:
        """The share of its late steps the worker sheds in turn (0 below `LEVEL_MIN`, or
        with fewer than `LEVEL_MIN_STEPS` steps in the window)."""
        if self._steps < LEVEL_MIN_STEPS:
            return 0.0
        level = self._shares / self._steps
        return level if level >= LEVEL_MIN else 0.0

    def to_shed(self, steps: Sequence[Late], began_ms: int) -> dict[int, str]:
        """The steps (by index) of a batch begun at `began_ms` not to poll, each with its
        reason. Steps without a limit, and steps whose slot has ended (missed, as without
        shedding), are neither shed nor counted."""
        live = [
            (index, step, began_ms - step.slot_ms, step.limit_ms)
            for index, step in enumerate(steps)
            if step.limit_ms is not None and began_ms - step.slot_ms < step.interval_ms
        ]
        out: dict[int, str] = {}
        with self._lock:
            self._observe([shed_share(late, limit) for _, _, late, limit in live], began_ms)
            level = self.level
            for index, step, lateness, limit in live:
                if lateness <= limit / 8:
                    continue  # the worker is not behind now (a lull): polled, and not counted
                balance = self._balance_of(step.gateway_id)
                balance = min(balance + level, BALANCE_MAX)
                if lateness > limit:
                    out[index] = shed_reason(lateness, limit)
                elif balance >= 1.0:
                    out[index] = turn_reason(lateness, limit, level)
                if index in out:
                    balance = max(balance - 1.0, BALANCE_MIN)
                self._balance[step.gateway_id] = balance
        return out

    def past_limit(self, step: Late, now_ms: int) -> str | None:
        """A poll the worker's Modbus loop reaches past its limit is shed (and paid for);
        its turn was decided when its batch began."""
        lateness = now_ms - step.slot_ms
        if step.limit_ms is None or not step.limit_ms < lateness < step.interval_ms:
            return None
        with self._lock:
            balance = self._balance_of(step.gateway_id)
            self._balance[step.gateway_id] = max(balance - 1.0, BALANCE_MIN)
        return shed_reason(lateness, step.limit_ms)

    def _balance_of(self, gateway_id: int) -> float:
        # Hashed only for a gateway not seen yet: this runs for every late step.
        balance = self._balance.get(gateway_id)
        return first_balance(gateway_id) if balance is None else balance

    def _observe(self, shares: list[float], at_ms: int) -> None:
        """Decay the sums by the time since the last batch, then add this batch's steps."""
        if self._at_ms is not None:
            decay = math.exp(-max(0, at_ms - self._at_ms) / self.window_ms)
            self._shares *= decay
            self._steps *= decay
            at_ms = max(at_ms, self._at_ms)
        self._at_ms = at_ms
        self._shares += sum(shares)
        self._steps += len(shares)


def is_shed(error: str | None) -> bool:
    """Whether a skipped slot's error says it was shed."""
    return error is not None and error.startswith(SHED_PREFIX)
