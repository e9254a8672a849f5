"""Overload shedding: which steps of a batch are not polled because the worker began the
batch too long after their slots. Pure: no clock, no Redis; tested by tables.

When the workers cannot keep up, the batches wait (in the broker, in the worker's pool) and
every poll would start late. Instead a step whose slot began more than its gateway's *late
limit* before its batch began is recorded as skipped, with a reason starting `shed: `, and
its chain goes on: the worker catches up, and the polls it does make stay on time. Only the
batch's own lateness counts: a poll waiting behind others for its endpoint (five devices
behind one bridge) was begun on time and is polled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: How a shed slot's poll-log error begins: the poll log keeps the four outcomes, and this
#: tells a shed slot from one skipped because its endpoint was busy.
SHED_PREFIX = "shed: "


def late_limit_ms(interval_ms: int, limit_s: float, share: float) -> int | None:
    """A gateway's late limit: the larger of `limit_s` and `share` of its interval (300 ms
    late is worth polling on a 60 s gateway, not on a 2 s one); None when `limit_s` is 0
    (shedding off: polls run late until their slot ends)."""
    if limit_s <= 0:
        return None
    return max(round(limit_s * 1000), round(share * interval_ms))


@dataclass(frozen=True)
class Late:
    """What the rule needs of one step: its slot, its gateway's interval and late limit."""

    slot_ms: int
    interval_ms: int
    limit_ms: int | None


def shed_reason(lateness_ms: int, limit_ms: int) -> str:
    return (
        f"{SHED_PREFIX}the worker began this poll {lateness_ms / 1000:.2f} s after its slot "
        f"(limit {limit_ms / 1000:.2f} s)"
    )


def to_shed(steps: Sequence[Late], began_ms: int) -> dict[int, str]:
    """The steps (by index) not to poll, each with its reason: those whose slot began more
    than their limit before `began_ms` (when the batch began) and has not ended (an ended
    slot is missed, as without shedding)."""
    out = {}
    for index, step in enumerate(steps):
        lateness = began_ms - step.slot_ms
        if step.limit_ms is None or lateness <= step.limit_ms:
            continue
        if lateness >= step.interval_ms:
            continue
        out[index] = shed_reason(lateness, step.limit_ms)
    return out


def is_shed(error: str | None) -> bool:
    """Whether a skipped slot's error says it was shed."""
    return error is not None and error.startswith(SHED_PREFIX)
