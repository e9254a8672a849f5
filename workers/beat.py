"""A beat scheduler that sends only while it holds a Redis lock: start two beats and
one stands by, taking over within a lock period if the active one dies."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from celery.beat import Scheduler

from polling.keys import Keys

from .app import settings

log = logging.getLogger(__name__)

LOCK_TTL_MS = 10_000

# KEYS: lock. ARGV: token, ttl. Keep the lock if ours, else take it if free.
_HOLD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""


class SingletonScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._token = uuid.uuid4().hex
        self._redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        self._hold = self._redis.register_script(_HOLD)
        self._key = Keys(settings.key_prefix).beat_lock
        self._active: bool | None = None  # unknown until the first tick logs it
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            active = bool(self._hold(keys=[self._key], args=[self._token, LOCK_TTL_MS]))
        except redis.RedisError as exc:
            log.warning("beat lock unavailable (%s); not sending", exc)
            active = False
        if active != self._active:
            log.warning(
                "beat %s",
                "active: sending" if active else "on standby: another beat holds the lock",
            )
            self._active = active
        if not active:
            return 1.0
        return min(super().tick(*args, **kwargs), 1.0)
