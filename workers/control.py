"""What the Celery side lends to diagnostics and audit: sending (steps, a canary), a view of
the broker's queues, and which workers answer over the broker."""

from __future__ import annotations

from functools import partial

from celery import Celery

from polling import configcache
from polling.checks.base import Context, Enqueue
from polling.runtime import Runtime

from .broker import RedisQueues
from .queues import queue_site
from .senders import send_canary


def polling_consumers(app: Celery, timeout: float = 2.0) -> list[str]:
    """Hostnames of the workers that answer within `timeout` and consume a site's polling
    queue (any site's)."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return sorted(
        name
        for name, queues in replies.items()
        if any(queue_site(q["name"]) is not None for q in queues)
    )


def broker_view(rt: Runtime) -> RedisQueues:
    """The broker's queues, every known site's polling queue among them."""
    return RedisQueues(rt.redis, rt.keys.broker, partial(configcache.known_sites, rt))


def check_context(
    app: Celery, rt: Runtime, enqueue: Enqueue | None = None, *, ask_workers: bool = False
) -> Context:
    """A check context with everything Celery can lend through `app` (asking the workers
    over the broker only for the audit: it takes seconds)."""
    consumers = partial(polling_consumers, app) if ask_workers else None
    return Context(rt, enqueue, partial(send_canary, app), broker_view(rt), consumers)
