"""What the Celery side lends to diagnostics and audit: sending (steps, a canary), a view of
the broker's queues, and which workers answer over the broker."""

from __future__ import annotations

from functools import partial

from celery import Celery

from polling.checks.base import Context, Enqueue
from polling.runtime import Runtime

from .broker import RedisQueues
from .queues import POLLING
from .senders import send_canary


def polling_consumers(app: Celery, timeout: float = 2.0) -> list[str]:
    """Hostnames of the workers that answer within `timeout` and consume `polling`."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return sorted(
        name for name, queues in replies.items() if any(q["name"] == POLLING for q in queues)
    )


def check_context(
    app: Celery, rt: Runtime, enqueue: Enqueue | None = None, *, ask_workers: bool = False
) -> Context:
    """A check context with everything Celery can lend through `app` (asking the workers
    over the broker only for the audit: it takes seconds)."""
    consumers = partial(polling_consumers, app) if ask_workers else None
    return Context(
        rt, enqueue, partial(send_canary, app), RedisQueues(rt.redis, rt.keys.broker), consumers
    )
