"""Thin tasks: each calls into `polling` and sends what it says to send."""

from __future__ import annotations

import logging

from polling import diagnostics, service
from polling.store import ms_to_dt

from . import heartbeat  # noqa: F401  (its signal handlers: heartbeats, sent-at header)
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
    rt = get_runtime()
    report = service.reconcile(rt, send_poll)
    if actions := report.repairs():
        diagnostics.record_reconcile(rt, actions)
    return {
        "started": len(report.started),
        "restarted": len(report.restarted),
        "retired": len(report.retired),
        "missed": report.missed,
        "flushed": report.flushed,
    }


@app.task(name="pollctl.diagnose", ignore_result=True)
def diagnose() -> str:
    """Every check, with the safe repairs applied and the run recorded."""
    rt = get_runtime()
    diagnosis = diagnostics.diagnose(rt, fix=True, enqueue=send_poll, canary=send_canary)
    for result in diagnosis.results:
        if result.status != "healthy":
            log.warning("diagnostics: %s %s: %s", result.status, result.component, result.message)
    for component, actions in diagnosis.repairs.items():
        log.warning("diagnostics repaired %s: %s", component, "; ".join(actions))
    try:
        diagnostics.record(rt, diagnosis)
    except Exception as exc:  # the database may be the very thing that is down
        log.warning("diagnostic run not recorded: %s", exc)
    return diagnosis.health


@app.task(name="pollctl.canary", ignore_result=True)
def canary(nonce: str) -> None:
    """Proof that a worker consumes the polling queue: answer on the nonce's list."""
    rt = get_runtime()
    key = rt.keys.canary(nonce)
    pipe = rt.redis.pipeline()
    pipe.rpush(key, canary.request.hostname or "?")
    pipe.expire(key, 60)
    pipe.execute()


def send_poll(gateway_id: int, token: str, slot_ms: int) -> None:
    """Enqueue a chain step to start at its slot (never more than one interval ahead)."""
    poll.apply_async((gateway_id, token, slot_ms), eta=ms_to_dt(slot_ms), queue=POLLING)


def send_canary(nonce: str, ttl: float) -> None:
    # Expires with its deadline, so a canary nobody waits for any more is not run.
    canary.apply_async((nonce,), queue=POLLING, expires=ttl)
