"""A bounded buffer in Redis for poll records the database could not take: kept in order,
once per entry id, flushed in order when the database answers again; past the bound,
losses are counted. An entry the database refuses is put aside as a dead letter with the
reason, so one bad entry never holds up the others."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import LockError, OutOfMemoryError, ResponseError, WatchError

from .keys import Keys
from .redisio import as_text, script

log = logging.getLogger(__name__)

#: What a flush's writer returns: the reason for each entry (by its index in the batch) it
#: could not write; it raises only when the database cannot be reached at all.
Refusals = dict[int, str]


@dataclass(frozen=True)
class Lost:
    """Records dropped because the buffer was full."""

    count: int
    first_ms: int | None
    last_ms: int | None


@dataclass(frozen=True)
class DeadLetter:
    """An entry the database refused, kept for an operator to retry or drop."""

    entry: dict | str  # the raw text when it was not even JSON
    reason: str
    at_ms: int


@dataclass(frozen=True)
class Flushed:
    written: int
    dead: int


class RecordBuffer:
    def __init__(self, redis: Redis, keys: Keys, limit: int) -> None:
        self.redis = redis
        self.keys = keys
        self.limit = limit
        self._push = script(redis, __package__, "buffer_push.lua")
        self._take = script(redis, __package__, "buffer_take.lua")
        # Records lost while Redis refused writes (full at `maxmemory` under noeviction):
        # counted here, added to the lost count once Redis takes writes again.
        self._guard = threading.Lock()
        self.unrecorded = 0
        self._unrecorded_ms: tuple[int, int] | None = None

    def push(self, entry: dict, now_ms: int) -> bool:
        """Keep `entry` (with its `id`) for later, once however often it is pushed; False
        (and counted as lost) when the buffer is full, or when Redis is."""
        keys = [self.keys.buffer, self.keys.buffer_lost, self.keys.buffer_ids]
        args = [json.dumps(entry), self.limit, now_ms, entry["id"]]
        try:
            self._record_unrecorded()
            return bool(self._push(keys=keys, args=args))
        except OutOfMemoryError:
            with self._guard:
                self.unrecorded += 1
                first = self._unrecorded_ms[0] if self._unrecorded_ms else now_ms
                self._unrecorded_ms = (first, now_ms)
            log.error(
                "Redis is full (maxmemory) and refuses writes: a poll record lost, counted "
                "(%s so far) until Redis takes writes again; give Redis memory",
                self.unrecorded,
            )
            return False

    def _record_unrecorded(self) -> None:
        """Add the records lost while Redis was full to its lost count."""
        with self._guard:
            if not self.unrecorded or self._unrecorded_ms is None:
                return
            count, (first, last) = self.unrecorded, self._unrecorded_ms
            pipe = self.redis.pipeline(transaction=True)
            pipe.hincrby(self.keys.buffer_lost, "count", count)
            pipe.hsetnx(self.keys.buffer_lost, "first_ms", first)
            pipe.hset(self.keys.buffer_lost, "last_ms", last)
            with contextlib.suppress(ResponseError):  # still full (OOM, EXECABORT)
                pipe.execute()
                self.unrecorded, self._unrecorded_ms = 0, None

    def pending(self) -> int:
        return int(self.redis.llen(self.keys.buffer))

    def lost(self) -> Lost:
        raw = self.redis.hgetall(self.keys.buffer_lost)
        data = {as_text(k): int(v) for k, v in raw.items()}
        return Lost(data.get("count", 0), data.get("first_ms"), data.get("last_ms"))

    def flush(
        self, write: Callable[[list[dict]], Refusals], now: Callable[[], int], batch: int = 500
    ) -> Flushed:
        """Hand the entries to `write`, oldest first, a batch at a time, removing each batch
        only once handled and only while this flusher holds the lock: a crash re-writes at
        most one batch, which the database's unique keys absorb. Entries `write` refuses
        (and any that is not JSON) become dead letters. One flusher at a time."""
        lock = self.redis.lock(
            self.keys.buffer_flush_lock, timeout=120, blocking_timeout=0, thread_local=False
        )
        if not lock.acquire():
            return Flushed(0, 0)
        written = dead = 0
        try:
            while items := self.redis.lrange(self.keys.buffer, 0, batch - 1):
                ids, letters = _write(items, write, now())
                keys = [self.keys.buffer, self.keys.buffer_ids, self.keys.buffer_dead, lock.name]
                # Pushes go to the right, so the left end is exactly what was read.
                args = [lock.local.token, len(items), *ids, *letters]
                if not self._take(keys=keys, args=args):
                    break  # the lock expired and another flusher took over
                written += len(items) - len(letters)
                dead += len(letters)
                lock.reacquire()
        finally:
            with contextlib.suppress(LockError):
                lock.release()
        return Flushed(written, dead)

    # -- dead letters, for an operator -----------------------------------------------------

    def put_aside(self, refused: list[tuple[dict, str]], now_ms: int) -> None:
        """Keep entries the database refused when first written, each with the reason."""
        if refused:
            self.redis.rpush(
                self.keys.buffer_dead, *[_letter(e, why, now_ms) for e, why in refused]
            )

    def dead_count(self) -> int:
        return int(self.redis.llen(self.keys.buffer_dead))

    def dead(self, limit: int = 1000) -> list[DeadLetter]:
        """The oldest `limit` dead letters."""
        out = []
        for raw in self.redis.lrange(self.keys.buffer_dead, 0, limit - 1):
            data = json.loads(raw)
            out.append(DeadLetter(data["entry"], data["reason"], int(data["at_ms"])))
        return out

    def retry_dead(self) -> int:
        """Put every dead letter's entry back at the end of the buffer (after the cause was
        fixed); returns how many. The next flush tries them again."""
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.keys.buffer_dead)
                    letters = [json.loads(raw) for raw in pipe.lrange(self.keys.buffer_dead, 0, -1)]
                    entries = [x["entry"] for x in letters if isinstance(x["entry"], dict)]
                    pipe.multi()
                    for entry in entries:
                        pipe.rpush(self.keys.buffer, json.dumps(entry))
                        if "id" in entry:
                            pipe.sadd(self.keys.buffer_ids, entry["id"])
                    pipe.delete(self.keys.buffer_dead)
                    for letter in letters:  # one that was not even JSON stays aside
                        if not isinstance(letter["entry"], dict):
                            pipe.rpush(self.keys.buffer_dead, json.dumps(letter))
                    pipe.execute()
                    return len(entries)
                except WatchError:
                    continue

    def drop_dead(self) -> int:
        """Delete every dead letter; returns how many."""
        with self.redis.pipeline() as pipe:
            pipe.llen(self.keys.buffer_dead)
            pipe.delete(self.keys.buffer_dead)
            count, _ = pipe.execute()
        return int(count)


def _write(
    items: list[bytes | str], write: Callable[[list[dict]], Refusals], now_ms: int
) -> tuple[list[str], list[str]]:
    """Hand the entries among `items` to `write`; returns the id of every item (to forget
    with it) and a dead letter (JSON) for each that was refused or was not an entry."""
    parsed = [_parse(item) for item in items]
    entries = {i: p for i, p in enumerate(parsed) if p is not None}
    order = list(entries)
    refused = {order[i]: why for i, why in write(list(entries.values())).items()}
    refused |= {i: "not a JSON object" for i, p in enumerate(parsed) if p is None}
    letters = [
        _letter(parsed[i] or as_text(items[i]), why, now_ms) for i, why in sorted(refused.items())
    ]
    ids = [str(p.get("id", "")) if p else "" for p in parsed]
    return ids, letters


def _letter(entry: dict | str, reason: str, now_ms: int) -> str:
    return json.dumps({"entry": entry, "reason": reason, "at_ms": now_ms})


def _parse(raw: bytes | str) -> dict | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
