"""systemd's watchdog for a worker run as `Type=notify` with `WatchdogSec=`: READY=1 once
its consumer consumes, then WATCHDOG=1 only while `consumption.judge` finds it consuming
its queues or standing aside for a cause a restart would not fix (its clock off, the broker
away), with STATUS= saying which. Without NOTIFY_SOCKET (tests, `make demo`) nothing of it
is built.

sd_notify comes from `systemd-watchdog`: pure Python, typed, and only sd_notify with
sd_watchdog_enabled (WATCHDOG_USEC, for this PID). cysystemd, better maintained, bundles
libsystemd and more for a one-datagram protocol and its CPython 3.11 wheel wants glibc
2.34; sdnotify has had no release since 2017; systemd-python compiles against libsystemd.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import redis
from systemd_watchdog import WatchDog

from polling.queueview import QueueState

from .broker import RedisQueues
from .consumption import Consumption, Evidence, Verdict, judge

log = logging.getLogger(__name__)

#: After the broker last failed to answer, a stopped loop is taken for the consumer's
#: reconnect this long: the consumer tries again every 1 to 2 s (workers/consumer.py), and
#: a restart would not bring the broker back.
RECONNECT_GRACE = 10.0
#: The loop samples itself at least this often (more often under a short WatchdogSec).
TICK_MAX = 1.0

#: The broker's queues now; raises `redis.RedisError` when the broker does not answer.
ReadQueues = Callable[[], list[QueueState]]
#: Queues the worker does not consume on purpose now.
SetAside = Callable[[], frozenset[str]]


class Watchdog:
    """Judges the evidence every quarter of WatchdogSec from a thread of the worker's main
    process (the PID systemd watches) and feeds systemd while it proves consumption; any
    evidence missing for half of WatchdogSec starves it, so systemd restarts the worker
    within one to two WatchdogSec of a stall."""

    def __init__(self, notifier: WatchDog) -> None:
        self.notifier = notifier
        timeout = notifier.timeout / 1e6
        self.period = timeout / 4
        self.stall = timeout / 2
        self.consumption = Consumption(tick=min(TICK_MAX, self.stall / 4), stall=self.stall)
        self._stop = threading.Event()

    @classmethod
    def from_env(cls) -> Watchdog | None:
        """The watchdog systemd asks for (NOTIFY_SOCKET), or None outside systemd."""
        return cls(WatchDog()) if os.environ.get("NOTIFY_SOCKET") else None

    def start(self, own: frozenset[str], aside: SetAside, queues: ReadQueues) -> Watchdog:
        """READY=1 (the consumer consumes when `worker_ready` fires), then the thread.
        `own`: the queues the worker was started to consume."""
        self._send(self.notifier.ready)
        threading.Thread(
            target=self._run, args=(own, aside, queues), name="pollctl-watchdog", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        # systemd stops watching once it stops the unit, so a warm shutdown may outlast this.
        self._stop.set()

    def _run(self, own: frozenset[str], aside: SetAside, queues: ReadQueues) -> None:
        gather = _Gatherer(self.consumption, own, aside, queues)
        last: Verdict | None = None
        while not self._stop.wait(self.period):
            try:
                evidence = gather()
            except Exception:  # unproven this time; systemd acts if it lasts
                log.exception("watchdog: evidence not read")
                continue
            verdict = judge(evidence, self.stall, RECONNECT_GRACE)
            if verdict.alive:
                self._send(self.notifier.notify)
            if verdict is not last:
                self._report(verdict, evidence, first=last is None)
                last = verdict

    def _report(self, verdict: Verdict, e: Evidence, *, first: bool) -> None:
        status = describe(verdict, e)
        self._send(lambda: self.notifier.status(status))
        if not verdict.alive:
            log.error("systemd watchdog starved: %s (a restart follows if it lasts)", status)
        elif verdict is Verdict.CONSUMING:
            log.log(logging.INFO if first else logging.WARNING, "systemd watchdog fed: %s", status)
        else:
            log.warning("systemd watchdog fed, not consuming: %s", status)

    @staticmethod
    def _send(send: Callable[[], object]) -> None:
        try:
            send()
        except OSError as exc:  # systemd away or restarting: the next datagram may pass
            log.warning("sd_notify failed: %s", exc)


class _Gatherer:
    """Evidence for one judgement: the consumer's, with what the broker says and what the
    worker sets aside, remembering when the set aside changed and the broker last failed."""

    def __init__(
        self, consumption: Consumption, own: frozenset[str], aside: SetAside, queues: ReadQueues
    ) -> None:
        self.consumption = consumption
        self.own = own
        self.aside = aside
        self.queues = queues
        self.aside_now, self.aside_since = aside(), time.monotonic()
        self.failed_at: float | None = None

    def __call__(self) -> Evidence:
        aside = self.aside()
        if aside != self.aside_now:
            self.aside_now, self.aside_since = aside, time.monotonic()
        loop = self.consumption.loop
        backlog = None
        try:
            states = self.queues()
        except redis.RedisError:
            self.failed_at = time.monotonic()
        else:
            backlog = _oldest(states, self.own & loop.consuming if loop else frozenset())
        return Evidence(
            now=time.monotonic(),
            own=self.own,
            loop=loop,
            received_at=self.consumption.received_at,
            aside=self.aside_now,
            aside_since=self.aside_since,
            backlog=backlog,
            broker_failed_at=self.failed_at,
        )


def broker_queues(
    redis_url: str, prefix: str, clock: Callable[[], int], sites: tuple[str, ...] = ()
) -> ReadQueues:
    """The broker's queues under `prefix` (kombu's `global_keyprefix`), the polling queues
    of `sites` (the worker's own) among them, read with a client of the watchdog's own that
    gives up within seconds (then the broker counts as away)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    view = RedisQueues(client, prefix, lambda: sites)
    return lambda: view.queues(clock())


def _oldest(states: list[QueueState], names: frozenset[str]) -> float | None:
    ages = [q.oldest_age for q in states if q.name in names and q.oldest_age is not None]
    return max(ages, default=None)


def describe(verdict: Verdict, e: Evidence) -> str:
    """The STATUS= line: what the worker does, in an operator's words."""
    own = ", ".join(sorted(e.own))
    if verdict is Verdict.CONSUMING:
        return f"consuming {own}"
    if verdict is Verdict.SET_ASIDE:
        aside = ", ".join(sorted(e.own & e.aside))
        return f"standing aside from {aside} while this host's clock is off (see its log)"
    if verdict is Verdict.BROKER_AWAY:
        return "reconnecting to the broker"
    if verdict is Verdict.LOOP_STALLED:
        since = f" for {e.now - e.loop.at:.0f} s" if e.loop is not None else ""
        return f"event loop stalled{since}"
    if verdict is Verdict.QUEUE_DROPPED:
        dropped = e.own - e.aside - (e.loop.consuming if e.loop is not None else frozenset())
        return f"not consuming {', '.join(sorted(dropped))}"
    return f"no message taken while the oldest due one has waited {e.backlog or 0:.0f} s"
