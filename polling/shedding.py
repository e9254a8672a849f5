"""Overload shedding: which steps of a batch are not polled because the worker began the
batch too long after their slots. Pure: no clock, no Redis; tested by tables.

When the workers cannot keep up, the batches wait (in the broker, in the worker's pool) and
every poll would start late. Instead a step whose slot began more than its gateway's *late
limit* before its batch began is recorded as skipped, with a reason starting `shed: `, and
its chain goes on: the worker catches up, and the polls it does make stay on time; from
half the limit on, a share of the steps rising with the lateness is shed already, chosen
by a hash of gateway and slot, so the shortfall is spread over the gateways (`shed_share`).
Only the batch's own lateness counts: a poll waiting behind others for its endpoint (five
devices behind one bridge) was begun on time and is polled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from .schedule import PROMPT_START_MIN_MS

#: How a shed slot's poll-log error begins: the poll log keeps the four outcomes, and this
#: tells a shed slot from one skipped because its endpoint was busy.
SHED_PREFIX = "shed: "


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


def rotation(gateway_id: int, slot_ms: int) -> float:
    """A number in [0, 1) fixed for each (gateway, slot) and unrelated from one slot to the
    next: which of a batch's steps a partial shed takes."""
    digest = hashlib.blake2b(f"{gateway_id}:{slot_ms}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64


def shed_share(lateness_ms: int, limit_ms: int) -> float:
    """The share of steps begun this late that is shed: none up to half the limit, all
    past the limit, and in between a share rising with the lateness.

    The ramp is what keeps shedding fair. With a hard cut, an overloaded worker's lateness
    settles at the limit, and whether a batch falls just above or just below it is decided
    by the fleet's own rhythm, which repeats every interval: the same windows, hence the
    same gateways, were shed slot after slot (20 gateways, 1.5 times what the worker could
    do: between 1 and 28 of 30 slots shed per gateway). On a ramp, lateness settles where
    the share shed matches the excess, every batch sheds about that share, and the
    rotation picks other gateways at every slot."""
    start = limit_ms / 2
    if lateness_ms <= start:
        return 0.0
    if lateness_ms > limit_ms:
        return 1.0
    return (lateness_ms - start) / (limit_ms - start)


def to_shed(steps: Sequence[Late], began_ms: int) -> dict[int, str]:
    """The steps (by index) not to poll, each with its reason: of those whose slot began
    before `began_ms` (when the batch began) by more than half their limit and has not
    ended (an ended slot is missed, as without shedding), `shed_share` of them, chosen by
    `rotation`."""
    out = {}
    for index, step in enumerate(steps):
        lateness = began_ms - step.slot_ms
        if step.limit_ms is None or lateness >= step.interval_ms:
            continue
        if rotation(step.gateway_id, step.slot_ms) < shed_share(lateness, step.limit_ms):
            out[index] = shed_reason(lateness, step.limit_ms)
    return out


def is_shed(error: str | None) -> bool:
    """Whether a skipped slot's error says it was shed."""
    return error is not None and error.startswith(SHED_PREFIX)
