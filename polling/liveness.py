"""Whether a chain is alive: its due poll overdue (the chain died) or its next slot too far
ahead (moved there by a clock ahead of the fleet's). Reconcile restarts both; `status` and
`validate` report them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from .chains import ChainState
from .plan import PollTarget

#: Slack past one interval before a chain's next slot counts as too far ahead.
AHEAD_SLACK_MS = 1000


class Overdue:
    """Whether a chain's due poll should have started and finished by now: the chain is
    dead (its message lost with Redis, or held by a killed worker until the visibility
    timeout). A gateway behind a shared endpoint (an RTU bridge) waits for the others'
    polls first, at most one interval (then it is skipped): that wait is part of its
    limit, so a slow but healthy queue is not declared dead."""

    def __init__(self, fleet: Iterable[PollTarget], grace_s: float) -> None:
        self.grace_s = grace_s
        by_endpoint: dict[tuple[str, int], list[PollTarget]] = defaultdict(list)
        for gateway in fleet:
            if gateway.active:
                by_endpoint[gateway.endpoint].append(gateway)
        #: Seconds each gateway may wait behind the others at its endpoint.
        self.waits: dict[int, float] = {}
        for group in by_endpoint.values():
            total = sum(g.budget for g in group)
            for g in group:
                self.waits[g.id] = min(g.grid.interval_ms / 1000, total - g.budget)

    def __call__(self, gateway: PollTarget, chain: ChainState, now_ms: int) -> bool:
        limit = gateway.budget + self.waits.get(gateway.id, 0.0) + self.grace_s
        return now_ms > chain.due_ms + round(1000 * limit)


def is_ahead(gateway: PollTarget, chain: ChainState, now_ms: int) -> bool:
    """The chain's next slot is further ahead than one interval (from now, or from when a
    paced start let it begin): a clock ahead of the fleet's moved it there (before the
    fleet clock), and it would poll nothing until then."""
    begins = max(now_ms, chain.paced_ms or 0)
    return chain.due_ms > begins + gateway.grid.interval_ms + AHEAD_SLACK_MS
