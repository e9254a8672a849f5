"""The Celery broker's Redis keys, read directly: queue depth, the age of the oldest waiting
message, messages held unacknowledged by workers, and the poll messages themselves.

This reads kombu's Redis layout (a list per queue and priority step, and the `unacked`
hash with its `unacked_index`); it sends nothing, so `polling` still never imports Celery.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from redis import Redis

#: Header stamped on every message when it is sent (ms since the epoch).
SENT_HEADER = "pollctl_sent_ms"
#: kombu's Redis transport keeps priorities 3, 6 and 9 in lists named `<queue>\x06\x16<n>`.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
BATCH_TASK = "pollctl.poll_batch"


def as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def queue_keys(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


@dataclass(frozen=True)
class QueueState:
    name: str
    waiting: int
    #: Seconds the oldest waiting message has been due (None when the queue is empty).
    oldest_age: float | None


@dataclass(frozen=True)
class UnackedState:
    #: Messages delivered to workers and not yet acknowledged (ETA tasks wait here).
    count: int
    #: Seconds since the oldest of them was delivered.
    oldest_age: float | None


@dataclass(frozen=True)
class PollMessage:
    """One chain step found in the broker, in a `pollctl.poll_batch` message."""

    raw: bytes
    #: The list it waits in, or `unacked` when a worker holds it.
    key: str
    gateway_id: int
    token: str
    slot_ms: int
    #: Steps the message carries, this one included.
    size: int = 1

    @property
    def held(self) -> bool:
        return self.key == UNACKED


def queue_state(redis: Redis, queue: str, now_ms: int) -> QueueState:
    pipe = redis.pipeline(transaction=False)
    for key in queue_keys(queue):
        pipe.llen(key)
        pipe.lindex(key, -1)  # kombu pushes on the left and pops on the right
    replies = pipe.execute()
    waiting = sum(replies[0::2])
    due = [_due_ms(raw) for raw in replies[1::2] if raw is not None]
    known = [d for d in due if d is not None]
    oldest = max(0.0, (now_ms - min(known)) / 1000) if known else None
    return QueueState(queue, waiting, oldest if waiting else None)


def unacked_state(redis: Redis, now_ms: int) -> UnackedState:
    count = redis.hlen(UNACKED)
    first = redis.zrange(UNACKED_INDEX, 0, 0, withscores=True)
    oldest = max(0.0, now_ms / 1000 - float(first[0][1])) if first else None
    return UnackedState(int(count), oldest if count else None)


def _payload(raw: bytes | str) -> dict:
    return json.loads(raw)


def _due_ms(raw: bytes | str) -> int | None:
    """When a waiting message became due: sent, or its ETA if later."""
    try:
        headers = _payload(raw).get("headers") or {}
    except ValueError:
        return None
    sent = headers.get(SENT_HEADER)
    eta = headers.get("eta")
    eta_ms = round(datetime.fromisoformat(eta).timestamp() * 1000) if eta else None
    candidates = [v for v in (sent, eta_ms) if v is not None]
    return max(candidates) if candidates else None


def _poll_steps(payload: dict) -> list[tuple[int, str, int]]:
    headers = payload.get("headers") or {}
    task = headers.get("task")
    if task != BATCH_TASK:
        return []
    body = payload.get("body", "")
    if (payload.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    try:
        args = json.loads(body)[0]
        return [(int(g), str(t), int(s)) for g, t, s in args[0]]
    except (ValueError, IndexError, TypeError):
        return []


def poll_messages(redis: Redis, queue: str, chunk: int = 1000) -> Iterator[PollMessage]:
    """Every chain step waiting in `queue` or held by a worker."""
    for key in queue_keys(queue):
        start = 0
        while batch := redis.lrange(key, start, start + chunk - 1):
            for raw in batch:
                steps = _poll_steps(_payload(raw))
                for step in steps:
                    yield PollMessage(as_bytes(raw), key, *step, size=len(steps))
            start += chunk
    for _tag, raw in redis.hscan_iter(UNACKED):
        steps = _poll_steps(json.loads(raw)[0])
        for step in steps:
            yield PollMessage(as_bytes(raw), UNACKED, *step, size=len(steps))


def remove_waiting(redis: Redis, message: PollMessage) -> bool:
    """Take a waiting message off its queue (never one a worker holds)."""
    if message.held:
        return False
    return bool(redis.lrem(message.key, 1, message.raw))  # type: ignore[arg-type]
