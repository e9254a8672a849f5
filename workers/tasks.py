"""Thin tasks: each calls into `polling.service` and sends what it says to send."""

from __future__ import annotations

import logging

from polling import service
from polling.store import ms_to_dt

from .app import app
from .queues import POLLING
from .runtime import get_runtime

log = logging.getLogger(__name__)


@app.task(name="pollctl.poll", ignore_result=True)
def poll(gateway_id: int, token: str, slot_ms: int) -> str:
    """One step of a gateway's chain; sends the next step if this one advanced the chain."""
    result = service.poll_step(get_runtime(), gateway_id, token, slot_ms)
    if result.next_ms is not None:
        send_poll(gateway_id, token, result.next_ms)
    return result.verdict


@app.task(name="pollctl.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    report = service.reconcile(get_runtime(), send_poll)
    return {
        "started": len(report.started),
        "restarted": len(report.restarted),
        "retired": len(report.retired),
        "missed": report.missed,
    }


def send_poll(gateway_id: int, token: str, slot_ms: int) -> None:
    """Enqueue a chain step to start at its slot (never more than one interval ahead)."""
    poll.apply_async((gateway_id, token, slot_ms), eta=ms_to_dt(slot_ms), queue=POLLING)
