"""What only Celery's remote control can tell: which workers answer, and their queues."""

from __future__ import annotations

from .app import app


def list_consumers(timeout: float = 2.0) -> dict[str, list[str]]:
    """Hostname -> queue names, for every worker that answers within `timeout`."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return {name: sorted(q["name"] for q in queues) for name, queues in replies.items()}
