"""Whether a worker provably consumes its queues: evidence from the consumer itself, judged
by one pure function (`judge`).

A worker's heartbeat is a thread of its own, so it goes on when the consumer does not (its
event loop blocked, its queue cancelled, its fetches stuck). The evidence therefore comes
from the consumer:
- a timer on the consumer's event loop (kombu's hub), which fires only while the loop runs,
  samples which queues the task consumer consumes and whether its prefetch has room;
- `task_received` says when a message last arrived;
- the broker's lists say how long the oldest due message of those queues has waited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from celery import bootsteps


class Verdict(Enum):
    CONSUMING = "consuming"
    #: Not consuming a queue on purpose (polling, while the host's clock is off).
    SET_ASIDE = "set aside"
    #: The loop is not running because the broker is away and the consumer reconnects.
    BROKER_AWAY = "broker away"
    LOOP_STALLED = "loop stalled"
    QUEUE_DROPPED = "queue dropped"
    #: Due messages wait in its queues, it has room for them, and none arrives.
    INTAKE_STALLED = "intake stalled"

    @property
    def alive(self) -> bool:
        """Consuming, or standing aside for a cause a restart would not fix."""
        return self in (Verdict.CONSUMING, Verdict.SET_ASIDE, Verdict.BROKER_AWAY)


@dataclass(frozen=True)
class LoopSample:
    """What the event loop saw at its latest tick (times in monotonic seconds)."""

    at: float
    consuming: frozenset[str]
    #: Since when the loop has run without a stall, consuming this same set.
    since: float
    #: Whether the consumer may fetch more (its prefetch not full); None when unknown.
    room: bool | None


@dataclass(frozen=True)
class Evidence:
    """Everything `judge` looks at (times in monotonic seconds)."""

    now: float
    #: The queues the worker was started to consume (its `-Q`).
    own: frozenset[str]
    loop: LoopSample | None
    #: When a task message last arrived (None: none yet).
    received_at: float | None
    #: Queues it does not consume on purpose now, and since when that set holds.
    aside: frozenset[str]
    aside_since: float
    #: Seconds the oldest due message of the queues it consumes has waited (None: none).
    backlog: float | None
    #: When the broker last failed to answer this process (None: not lately).
    broker_failed_at: float | None


def judge(e: Evidence, stall: float, reconnect_grace: float) -> Verdict:
    """What `e` proves. `stall` (seconds) is how long any evidence may be missing;
    `reconnect_grace` how long after the broker last failed to answer a stopped loop is
    taken for the consumer's reconnect (its retries pause up to 2 s)."""
    loop = e.loop
    if loop is None or e.now - loop.at > stall:
        away = e.broker_failed_at is not None and e.now - e.broker_failed_at <= reconnect_grace
        return Verdict.BROKER_AWAY if away else Verdict.LOOP_STALLED
    # A change (cancel, add, set aside, resume) settles for `stall` before it counts, so
    # the moment between a resume and the consumer acting on it proves nothing.
    settled = e.now - max(loop.since, e.aside_since) > stall
    if settled and e.own - loop.consuming - e.aside:
        return Verdict.QUEUE_DROPPED
    intake = max(loop.since, e.received_at or loop.since)
    waiting = e.backlog is not None and e.backlog > stall
    if loop.room and waiting and e.now - intake > stall:
        return Verdict.INTAKE_STALLED
    if e.own & (e.aside - loop.consuming):
        return Verdict.SET_ASIDE
    return Verdict.CONSUMING


class Consumption:
    """The evidence as it arrives, from the consumer's thread (ticks, arrivals); read by
    the watchdog's thread. Every field is replaced whole, never mutated."""

    def __init__(
        self, *, tick: float, stall: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        #: Seconds between loop samples.
        self.tick = tick
        self.stall = stall
        self.clock = clock
        self.loop: LoopSample | None = None
        self.received_at: float | None = None

    def sample(self, consuming: frozenset[str], room: bool | None) -> None:
        """Called on the event loop: what its consumer consumes now."""
        now = self.clock()
        last, since = self.loop, now
        if last is not None and last.consuming == consuming and now - last.at <= self.stall:
            since = last.since
        self.loop = LoopSample(now, consuming, since, room)

    def received(self, **_: Any) -> None:
        """`task_received`: a task message arrived from the broker."""
        self.received_at = self.clock()

    def step(self) -> type[bootsteps.StartStopStep]:
        """A consumer bootstep that samples on the consumer's event loop while it runs."""
        return _sampling_step(self)


def _sampling_step(consumption: Consumption) -> type[bootsteps.StartStopStep]:
    class LoopSampler(bootsteps.StartStopStep):
        # Started after the task consumer exists, and again after every reconnect.
        name = "pollctl.LoopSampler"
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, c: Any, **kwargs: Any) -> None:
            super().__init__(c, **kwargs)
            self.entry: Any = None

        def include_if(self, c: Any) -> bool:
            return c.hub is not None  # no event loop, no proof: the watchdog says so

        def start(self, c: Any) -> None:
            self.entry = c.hub.call_repeatedly(consumption.tick, self.sample, c)

        def stop(self, c: Any) -> None:
            if self.entry is not None:
                self.entry.cancel()
                self.entry = None

        @staticmethod
        def sample(c: Any) -> None:
            consumer = c.task_consumer
            if consumer is None:
                return
            names = frozenset(q.name for q in consumer.queues if consumer.consuming_from(q))
            consumption.sample(names, _room(consumer))

    return LoopSampler


def _room(consumer: Any) -> bool | None:
    """Whether kombu's prefetch limit lets the consumer fetch another message."""
    try:
        return bool(consumer.channel.qos.can_consume())
    except AttributeError:  # a transport without kombu's virtual QoS
        return None
