"""A bounded buffer in Redis for poll records the database could not take: kept in order,
flushed in order when the database answers again; past the bound, losses are counted."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import LockError

from .keys import Keys
from .redisio import as_text, script


@dataclass(frozen=True)
class Lost:
    """Records dropped because the buffer was full."""

    count: int
    first_ms: int | None
    last_ms: int | None


class RecordBuffer:
    def __init__(self, redis: Redis, keys: Keys, limit: int) -> None:
        self.redis = redis
        self.keys = keys
        self.limit = limit
        self._push = script(redis, __package__, "buffer_push.lua")

    def push(self, entry: dict, now_ms: int) -> bool:
        """Keep `entry` for later; False (and counted as lost) when the buffer is full."""
        keys = [self.keys.buffer, self.keys.buffer_lost]
        return bool(self._push(keys=keys, args=[json.dumps(entry), self.limit, now_ms]))

    def pending(self) -> int:
        return int(self.redis.llen(self.keys.buffer))

    def lost(self) -> Lost:
        raw = self.redis.hgetall(self.keys.buffer_lost)
        data = {as_text(k): int(v) for k, v in raw.items()}
        return Lost(data.get("count", 0), data.get("first_ms"), data.get("last_ms"))

    def flush(self, write: Callable[[list[dict]], None], batch: int = 500) -> int:
        """Hand the entries to `write`, oldest first, a batch at a time, removing each batch
        only once written: a crash re-writes at most one batch, which the database's unique
        keys absorb. One flusher at a time; returns the entries written."""
        lock = self.redis.lock(
            self.keys.buffer_flush_lock, timeout=120, blocking_timeout=0, thread_local=False
        )
        if not lock.acquire():
            return 0
        written = 0
        try:
            while items := self.redis.lrange(self.keys.buffer, 0, batch - 1):
                write([json.loads(item) for item in items])
                # Pushes go to the right, so the left end is exactly what was written.
                self.redis.ltrim(self.keys.buffer, len(items), -1)
                written += len(items)
                lock.reacquire()
        finally:
            with contextlib.suppress(LockError):
                lock.release()
        return written
