"""The broker's Redis keys read directly, as `polling.queueview` wants them: queue depth,
the age of the oldest waiting message, messages held unacknowledged by workers, and the
chain steps in poll messages.

This is kombu's Redis layout (a list per queue and priority step, and the `unacked` hash
with its `unacked_index`) and Celery's message format, known here and nowhere else.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import cast

from redis import Redis

from polling.queueview import QueuedStep, QueueState, UnackedState

from .queues import POLL_BATCH_TASK, QUEUE_NAMES, queue_site, site_queue

#: Header stamped on every message when it is sent (ms since the epoch).
SENT_HEADER = "pollctl_sent_ms"
#: kombu's Redis transport keeps priorities 3, 6 and 9 in lists named `<queue>\x06\x16<n>`.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


def queue_keys(queue: str, prefix: str = "") -> list[str]:
    return [
        f"{prefix}{queue}" if step == 0 else f"{prefix}{queue}{PRIORITY_SEP}{step}"
        for step in PRIORITY_STEPS
    ]


class RedisQueues:
    """A `QueueInspector` over kombu's keys in the broker's Redis, under the installation's
    broker prefix (kombu's `global_keyprefix`): the app's queues and the polling queue of
    each site `sites` names when asked (the default site's alone without it)."""

    def __init__(
        self, redis: Redis, prefix: str, sites: Callable[[], Iterable[str]] | None = None
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.sites = sites
        self.unacked_key = f"{prefix}{UNACKED}"
        self.unacked_index_key = f"{prefix}{UNACKED_INDEX}"

    def names(self) -> list[str]:
        """The queues looked at: every site's polling queue first, then the others."""
        polling = [site_queue(site) for site in (self.sites() if self.sites else ())]
        return list(dict.fromkeys(polling + list(QUEUE_NAMES)))

    def queues(self, now_ms: int) -> list[QueueState]:
        return [self._queue(name, now_ms) for name in self.names()]

    def _queue(self, queue: str, now_ms: int) -> QueueState:
        pipe = self.redis.pipeline(transaction=False)
        for key in queue_keys(queue, self.prefix):
            pipe.llen(key)
            pipe.lindex(key, -1)  # kombu pushes on the left and pops on the right
        replies = pipe.execute()
        waiting = sum(replies[0::2])
        due = [_due_ms(raw) for raw in replies[1::2] if raw is not None]
        known = [d for d in due if d is not None]
        oldest = max(0.0, (now_ms - min(known)) / 1000) if known else None
        return QueueState(queue, waiting, oldest if waiting else None)

    def unacked(self, now_ms: int) -> UnackedState:
        count = self.redis.hlen(self.unacked_key)
        first = self.redis.zrange(self.unacked_index_key, 0, 0, withscores=True)
        oldest = max(0.0, now_ms / 1000 - float(first[0][1])) if first else None
        return UnackedState(int(count), oldest if count else None)

    def queued_steps(self, chunk: int = 1000) -> Iterator[QueuedStep]:
        polling = [name for name in self.names() if queue_site(name) is not None]
        for key in (k for name in polling for k in queue_keys(name, self.prefix)):
            start = 0
            while batch := self.redis.lrange(key, start, start + chunk - 1):
                for raw in batch:
                    yield from _steps(json.loads(raw), (key, _as_bytes(raw)), held=False)
                start += chunk
        for _tag, raw in self.redis.hscan_iter(self.unacked_key):
            yield from _steps(json.loads(raw)[0], (self.unacked_key, _as_bytes(raw)), held=True)

    def remove(self, step: QueuedStep) -> bool:
        if step.held:
            return False
        key, raw = cast("tuple[str, bytes]", step.message)
        return bool(self.redis.lrem(key, 1, raw))  # type: ignore[arg-type]


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _due_ms(raw: bytes | str) -> int | None:
    """When a waiting message became due: sent, or its ETA if later."""
    try:
        headers = json.loads(raw).get("headers") or {}
    except ValueError:
        return None
    sent = headers.get(SENT_HEADER)
    eta = headers.get("eta")
    eta_ms = round(datetime.fromisoformat(eta).timestamp() * 1000) if eta else None
    candidates = [v for v in (sent, eta_ms) if v is not None]
    return max(candidates) if candidates else None


def _steps(payload: dict, message: tuple[str, bytes], *, held: bool) -> Iterator[QueuedStep]:
    """The chain steps of a `pollctl.poll_batch` message (none for any other)."""
    if (payload.get("headers") or {}).get("task") != POLL_BATCH_TASK:
        return
    body = payload.get("body", "")
    if (payload.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    try:
        steps = [(int(g), str(t), int(s)) for g, t, s in json.loads(body)[0][0]]
    except (ValueError, IndexError, TypeError):
        return
    for gateway_id, token, slot_ms in steps:
        yield QueuedStep(gateway_id, token, slot_ms, held, message, size=len(steps))
