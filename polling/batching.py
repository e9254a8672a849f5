"""Chain steps grouped into poll batches: steps whose slots start in the same window travel
in one task message, so the queue's cost is paid per batch, not per poll.

A step is one link of a gateway's chain: (gateway id, token, slot start in ms). Grouping
changes only how steps travel; every step keeps its own token, claim and record.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable

Step = tuple[int, str, int]
#: Steps whose slots start within this are due: they are sent at once, all together.
DUE_LEAD_S = 0.25
#: Sends one batch of steps (all in one window, earliest slot first).
SendBatch = Callable[[list[Step]], None]


def group_steps(
    steps: Iterable[Step], window_ms: int, size: int, due_ms: int | None = None
) -> list[list[Step]]:
    """Steps by window of slot start, at most `size` per batch, earliest batch first; each
    batch is ordered by slot and gateway, so a window's batches are the same from one
    interval to the next. Steps whose slots start by `due_ms` travel together whatever
    their window: they are due, and splitting them would only add tasks to a backlog."""
    windows: dict[int, list[Step]] = defaultdict(list)
    for step in steps:
        if due_ms is not None and step[2] <= due_ms:
            windows[-1].append(step)
        else:
            windows[step[2] // window_ms if window_ms else step[2]].append(step)
    batches = []
    for key in sorted(windows):
        ordered = sorted(windows[key], key=lambda s: (s[2], s[0]))
        batches += [ordered[i : i + size] for i in range(0, len(ordered), size)]
    return batches


class StepBatcher:
    """Collects the steps an operation starts (`add` is an `Enqueue`) and sends them in
    batches on `flush`, and along the way whenever the oldest unsent step has waited
    `hold_s`: starting ten thousand chains takes seconds, and the first slots must not
    pass while they wait."""

    def __init__(
        self,
        send: SendBatch,
        window_ms: int,
        size: int,
        hold_s: float = 0.2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._send = send
        self.window_ms = window_ms
        self.size = size
        self.hold_s = hold_s
        self._clock = clock
        self._steps: list[Step] = []
        self._since = 0.0

    def add(self, gateway_id: int, token: str, slot_ms: int) -> None:
        if not self._steps:
            self._since = self._clock()
        self._steps.append((gateway_id, token, slot_ms))
        if self._clock() - self._since >= self.hold_s:
            self.flush()

    def flush(self) -> int:
        """Send what was added; returns the number of batches sent."""
        steps, self._steps = self._steps, []
        due_ms = round(1000 * (self._clock() + DUE_LEAD_S))
        batches = group_steps(steps, self.window_ms, self.size, due_ms)
        for batch in batches:
            self._send(batch)
        return len(batches)
