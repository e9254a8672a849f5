"""The successors a worker process produces, held until shortly before their window and then
sent as one batch per window: batches that started apart (a start spread over seconds, a
chain restarted alone) merge here, so the number of tasks per window stays small.

A step waits here as it would as an ETA message in this worker's memory: if the process
dies, reconcile restarts the chains; a warm shutdown sends everything first.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from polling.batching import DUE_LEAD_S, SendBatch, Step, group_steps

#: Steps are handed to the broker this long before their window starts.
LEAD_S = DUE_LEAD_S
TICK_S = 0.02


class Outbox:
    def __init__(self, send: SendBatch, window_ms: int, size: int) -> None:
        self._send = send
        self.window_ms = max(window_ms, 1)
        self.size = size
        self._windows: dict[int, list[Step]] = defaultdict(list)
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, steps: list[Step]) -> None:
        with self._guard:
            for step in steps:
                self._windows[step[2] // self.window_ms].append(step)
        self._start()
        self.send_due()

    def send_due(self, lead_s: float = LEAD_S) -> None:
        """Send every window that starts within `lead_s`."""
        horizon_ms = (time.time() + lead_s) * 1000
        horizon = horizon_ms // self.window_ms
        with self._guard:
            due = [key for key in self._windows if key <= horizon]
            steps = [step for key in due for step in self._windows.pop(key)]
        # Everything due goes in as few tasks as the batch size allows (a backlog of late
        # steps merges instead of piling up as tiny tasks).
        for batch in group_steps(steps, self.window_ms, self.size, due_ms=round(horizon_ms)):
            self._send(batch)

    def send_all(self) -> None:
        self.send_due(lead_s=10**9)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._guard:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, name="pollctl-outbox", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(TICK_S)
            self.send_due()
