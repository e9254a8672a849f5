"""A beat scheduler that sends only while it holds a Redis lock: start two beats and
one stands by, taking over within a lock period if the active one dies."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from celery.beat import Scheduler

from polling import heartbeat
from polling.fleetclock import FleetClock
from polling.keys import Keys
from polling.redisio import script
from polling.schedule import now_ms
from polling.settings import Settings

log = logging.getLogger(__name__)

LOCK_TTL_MS = 10_000


class SingletonScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        app = kwargs["app"] if "app" in kwargs else args[0]
        self.settings: Settings = app.settings
        settings = self.settings
        self._token = uuid.uuid4().hex
        self._redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        self._hold = script(self._redis, __package__, "beat_hold.lua")
        self._clock = FleetClock(self._redis)  # to report this host's skew
        self._key = Keys(settings.key_prefix).beat_lock
        self._active: bool | None = None  # unknown until the first tick logs it
        self._published_ms = 0
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            active = bool(self._hold(keys=[self._key], args=[self._token, LOCK_TTL_MS]))
        except redis.RedisError as exc:
            if self._active is not False:
                log.warning("beat lock unavailable (%s); not sending", exc)
            self._active = False
            return 1.0
        changed = active != self._active
        if changed:
            log.warning(
                "beat %s",
                "active: sending" if active else "on standby: another beat holds the lock",
            )
            self._active = active
        self._publish(active, changed)
        if not active:
            return 1.0
        return min(super().tick(*args, **kwargs), 1.0)

    def _publish(self, active: bool, changed: bool) -> None:
        """A heartbeat, active or standing by, so diagnostics can tell one beat from two."""
        now = now_ms()
        if not changed and now - self._published_ms < heartbeat.PERIOD_SECONDS * 1000:
            return
        settings = self.settings
        skew = self._clock.measure()
        info = heartbeat.this_process(
            f"beat-{self._token[:8]}", settings, now, active=active, skew_ms=skew
        )
        try:
            heartbeat.publish(self._redis, Keys(settings.key_prefix).beat(self._token), info)
            self._published_ms = now
        except redis.RedisError as exc:
            log.warning("beat heartbeat not written: %s", exc)
