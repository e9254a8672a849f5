"""Chain steps on their way to the broker: held until shortly before their slot's window,
then sent as one poll-batch task per window.

A step is one link of a gateway's chain: (gateway id, token, slot start in ms). Steps whose
slots start in one window travel in one task message, so the queue's cost is paid per
batch, not per poll; batches that started apart (a start spread over seconds, a chain
restarted alone) merge here. Grouping changes only how steps travel: every step keeps its
own token, claim and record.

A held step is like an ETA message in this process's memory: if the process dies,
reconcile restarts its chain; a warm shutdown sends everything held, and every successor
of a batch that ends after it, as it comes.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable

from .schedule import now_ms
from .sites import DEFAULT_SITE

log = logging.getLogger(__name__)

Step = tuple[int, str, int]
#: Sends one batch of steps (earliest slot first); raises when the broker is unreachable.
SendBatch = Callable[[list[Step]], None]
#: A sender for one site's steps (its batches go to that site's queue).
SenderFor = Callable[[str], "StepSender"]
#: Steps whose slots start within this are due: they go at once, all together.
LEAD_MS = 250
#: How often a running sender looks for due windows.
TICK_S = 0.02


def group_steps(
    steps: Iterable[Step], window_ms: int, size: int, due_ms: int | None = None
) -> list[list[Step]]:
    """Steps by window of slot start, at most `size` per batch, earliest batch first; each
    batch is ordered by slot and gateway, so a window's batches are the same from one
    interval to the next. Steps whose slots started by `due_ms` (late ones) travel together
    whatever their window: splitting them would only add tasks to a backlog. Steps not yet
    due never join them, even within the lead: a batch ends after its last slot, and a late
    step in a batch with later windows would have its successor late again, every interval."""
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


class Ticker:
    """Calls `tick` from a thread of its own every `TICK_S` until `stop`; an error is logged
    and the next tick comes as usual (a dead thread would leave held steps unsent)."""

    def __init__(self, tick: Callable[[], object]) -> None:
        self._tick = tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pollctl-sender", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self._tick()
            except Exception:
                log.exception("step sender tick failed")


class StepSender:
    """Holds steps and sends each window `LEAD_MS` before it starts, from a thread of its
    own (`start`) or whenever steps are added. A batch the broker refuses is kept and
    tried again on the next tick, so a broker reconnect delays steps but loses none."""

    def __init__(
        self,
        send: SendBatch,
        window_ms: int,
        size: int,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._send = send
        self.window_ms = max(window_ms, 1)
        self.size = size
        self._clock = clock
        self._windows: dict[int, list[Step]] = defaultdict(list)
        self._guard = threading.Lock()
        self._sending = threading.Lock()  # one sender of a window at a time
        self._ticked = 0
        self._failing = False
        self._ticker = Ticker(self.send_due)

    def put(self, steps: Iterable[Step]) -> None:
        with self._guard:
            for step in steps:
                self._windows[step[2] // self.window_ms].append(step)
        if self._ticker.stopped:
            # Stopped (a warm shutdown) while batches still run: their successors leave
            # at once, as the process may exit as soon as the last batch ends.
            self.send_all()
        elif self._clock() - self._ticked >= TICK_S * 1000:
            self.send_due()  # due steps leave at once; without a thread, ticks happen here

    def add(self, gateway_id: int, token: str, slot_ms: int) -> None:
        """`put` of one step (the `Enqueue` that start, reconcile and repairs call)."""
        self.put([(gateway_id, token, slot_ms)])

    def pending(self) -> int:
        with self._guard:
            return sum(len(steps) for steps in self._windows.values())

    def send_due(self) -> int:
        """Send every window that starts within `LEAD_MS`; returns the steps sent."""
        now = self._clock()
        self._ticked = now
        return self._send_until(now + LEAD_MS, now)

    def send_all(self) -> int:
        """Send everything held (due steps together, the rest by window)."""
        return self._send_until(None, self._clock())

    def _send_until(self, horizon_ms: int | None, due_ms: int) -> int:
        with self._sending:
            with self._guard:
                last = None if horizon_ms is None else horizon_ms // self.window_ms
                keys = [k for k in self._windows if last is None or k <= last]
                steps = [step for key in keys for step in self._windows.pop(key)]
            batches = group_steps(steps, self.window_ms, self.size, due_ms=due_ms)
            for n, batch in enumerate(batches):
                try:
                    self._send(batch)
                except Exception as exc:
                    self._put_back([s for b in batches[n:] for s in b], exc)
                    return sum(len(b) for b in batches[:n])
            if self._failing:
                log.warning("steps sent again: the broker took them")
                self._failing = False
            return len(steps)

    def _put_back(self, steps: list[Step], exc: Exception) -> None:
        if not self._failing:
            log.warning("%d steps held: the broker did not take them (%s)", len(steps), exc)
            self._failing = True
        with self._guard:
            for step in steps:
                self._windows[step[2] // self.window_ms].append(step)

    def start(self) -> StepSender:
        """Send due windows from a thread every `TICK_S` until `stop`."""
        self._ticker.start()
        return self

    def stop(self) -> int:
        """Stop the thread, then send everything held, and from now on every step as it is
        put; returns the steps still unsent."""
        self._ticker.stop()
        self.send_all()
        left = self.pending()
        if left:
            log.error("%d steps not sent: the broker is unreachable; reconcile restarts them", left)
        return left


class SiteSenders:
    """One `StepSender` per site, made on first use: a site's steps are held, grouped and
    sent apart from every other site's, so a batch never mixes sites (a worker of one
    site would poll gateways it cannot reach). One thread ticks them all."""

    def __init__(self, sender_for: SenderFor) -> None:
        self._sender_for = sender_for
        self._senders: dict[str, StepSender] = {}
        self._guard = threading.Lock()
        self._stopped = False
        self._ticker = Ticker(self.send_due)

    def site(self, site: str) -> StepSender:
        with self._guard:
            sender = self._senders.get(site)
            if sender is None:
                sender = self._senders[site] = self._sender_for(site)
                if self._stopped:
                    sender.stop()  # after a warm shutdown every step leaves at once
            return sender

    def put(self, steps: Iterable[Step], site: str = DEFAULT_SITE) -> None:
        self.site(site).put(steps)

    def add(self, gateway_id: int, token: str, slot_ms: int, site: str = DEFAULT_SITE) -> None:
        """`put` of one step (the `Enqueue` that start, reconcile and repairs call)."""
        self.site(site).put([(gateway_id, token, slot_ms)])

    def _all(self) -> list[StepSender]:
        with self._guard:
            return list(self._senders.values())

    def pending(self) -> int:
        return sum(sender.pending() for sender in self._all())

    def send_due(self) -> int:
        return sum(sender.send_due() for sender in self._all())

    def send_all(self) -> int:
        return sum(sender.send_all() for sender in self._all())

    def start(self) -> SiteSenders:
        """Send due windows of every site from a thread every `TICK_S` until `stop`."""
        self._ticker.start()
        return self

    def stop(self) -> int:
        """`StepSender.stop` of every site; returns the steps still unsent."""
        self._ticker.stop()
        with self._guard:
            self._stopped = True
            senders = list(self._senders.values())
        return sum(sender.stop() for sender in senders)
