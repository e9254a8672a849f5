"""Paced start: the first round of a fleet's start at most `rate` first polls a second.

A gateway's first poll costs more than the ones after it (a connection opened, a pymodbus
client built), so starting ten thousand gateways at 10 s asks a worker for a thousand of
them a second on top of the polls of the gateways already started, and the whole first
round runs late. Spread over `count / rate` seconds instead, each poll stays on time. Pure:
slot arithmetic only, tested by cases.
"""

from __future__ import annotations

from collections.abc import Sequence

from .schedule import Grid


def paced_firsts(
    firsts: Sequence[tuple[Grid, int]], now_ms: int, rate: float, cap_ms: int
) -> list[int]:
    """Each chain's first slot with the start paced: taken in the order of their first
    slots, the k-th begins no earlier than `now_ms + k / rate` (its first slot at or after
    that), never more than `cap_ms` later than it would have. A fleet whose first slots are
    already spread thinner than `rate` keeps them all."""
    order = sorted(range(len(firsts)), key=lambda i: firsts[i][1])
    out = [first for _, first in firsts]
    for k, index in enumerate(order):
        grid, first = firsts[index]
        not_before = now_ms + min(round(1000 * k / rate), cap_ms)
        # A long interval may start in the slot in progress (its poll is due now).
        if max(first, now_ms) < not_before:
            out[index] = grid.containing(not_before - 1) + grid.interval_ms
    return out
