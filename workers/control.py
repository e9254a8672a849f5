"""What the Celery side lends to diagnostics and audit: sending (steps, a canary), a view of
the broker's queues, and which workers answer over the broker."""

from __future__ import annotations

from celery import current_app

from polling.checks.base import Context, Enqueue
from polling.runtime import Runtime

from .broker import RedisQueues
from .queues import POLLING
from .senders import send_canary


def polling_consumers(timeout: float = 2.0) -> list[str]:
    """Hostnames of the workers that answer within `timeout` and consume `polling`."""
    replies = current_app.control.inspect(timeout=timeout).active_queues() or {}
    return sorted(
        name for name, queues in replies.items() if any(q["name"] == POLLING for q in queues)
    )


def check_context(
    rt: Runtime, enqueue: Enqueue | None = None, *, ask_workers: bool = False
) -> Context:
    """A check context with everything Celery can lend (asking the workers over the
    broker only for the audit: it takes seconds)."""
    consumers = polling_consumers if ask_workers else None
    return Context(rt, enqueue, send_canary, RedisQueues(rt.redis), consumers)
