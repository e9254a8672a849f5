"""A worker's heartbeat in Redis (what it consumes, its code and configuration), written
by a thread from the worker's start until its shutdown; and the sent-at header on every
message, from which diagnostics tell the age of the oldest waiting one."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from polling import heartbeat
from polling.fleetclock import FleetClock, describe
from polling.keys import Keys
from polling.schedule import now_ms
from polling.settings import Settings

from .broker import SENT_HEADER
from .queues import served_sites, site_queue

log = logging.getLogger(__name__)


#: The clock sent-at stamps are read from: the process's fleet clock once it has one, so
#: queue ages compare with Redis's time whatever this host's clock says.
_sent_clock: Callable[[], int] = now_ms


def stamp_sent_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """`before_task_publish`: when the message was sent (ms)."""
    if headers is not None:
        headers.setdefault(SENT_HEADER, _sent_clock())


def stamp_with(clock: Callable[[], int]) -> None:
    global _sent_clock
    _sent_clock = clock


class Heartbeat:
    """Publishes this worker's heartbeat every `heartbeat.PERIOD_SECONDS` from a thread,
    with its clock's skew from Redis's measured each time. Past `clock_skew_max` the worker
    stops consuming its sites' polling queues (and says why) until its clock is back
    within it."""

    def __init__(
        self, app: Celery, clock: FleetClock, hostname: str, queues: tuple[str, ...]
    ) -> None:
        self.app = app
        self.settings: Settings = app.settings  # type: ignore[attr-defined]
        self.clock = clock
        self.hostname = hostname
        self.queues = queues
        #: The sites it serves: the site queues among those it consumes.
        self.sites = served_sites(queues)
        self.polling_queues = frozenset(site_queue(site) for site in self.sites)
        self._paused = False
        self._stop = threading.Event()

    def start(self) -> Heartbeat:
        threading.Thread(target=self._run, name="pollctl-heartbeat", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def set_aside(self) -> frozenset[str]:
        """The queues this worker does not consume on purpose now: its polling queues while
        its clock is past the bound (the systemd watchdog goes on feeding: a restart would
        not fix a clock)."""
        return self.polling_queues if self._paused else frozenset()

    def _run(self) -> None:
        s = self.settings
        client = redis.Redis.from_url(s.redis_url, socket_timeout=5, socket_connect_timeout=5)
        key = Keys(s.key_prefix).worker(self.hostname)
        while not self._stop.is_set():
            skew = self.clock.measure()
            if self.sites:
                self._follow_clock(skew)
            serving = () if self._paused else self.sites
            info = heartbeat.this_process(
                self.hostname,
                s,
                self.clock(),
                queues=self.queues,
                polls=bool(serving),
                sites=serving,
                skew_ms=skew,
            )
            try:
                heartbeat.publish(client, key, info)
            except redis.RedisError as exc:
                log.warning("heartbeat not written: %s", exc)
            self._stop.wait(heartbeat.PERIOD_SECONDS)
        with contextlib.suppress(redis.RedisError):  # it expires on its own anyway
            client.delete(key)

    def _follow_clock(self, skew: int | None) -> None:
        """Stop consuming the polling queues while the clock is past the bound, resume once
        back."""
        within = self.clock.within(self.settings.clock_skew_max)
        try:
            if not within and not self._paused:
                for queue in sorted(self.polling_queues):
                    self.app.control.cancel_consumer(queue, destination=[self.hostname])
                self._paused = True
                log.error(
                    "not polling: this host's clock is %s, past POLLING_CLOCK_SKEW_MAX "
                    "(%g s); fix its time sync",
                    describe(skew or 0),
                    self.settings.clock_skew_max,
                )
            elif within and self._paused:
                for queue in sorted(self.polling_queues):
                    self.app.control.add_consumer(queue, destination=[self.hostname])
                self._paused = False
                log.warning("polling again: this host's clock is back within the bound")
        except Exception as exc:  # the broker may be away; the next beat tries again
            log.warning("consumers of %s not changed: %s", ", ".join(self.polling_queues), exc)
