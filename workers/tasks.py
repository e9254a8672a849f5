"""Thin tasks: each calls into `polling` and sends what it says to send."""

from __future__ import annotations

import logging
import os
import threading

from celery.signals import worker_shutting_down

from polling import batch, diagnostics, service
from polling.batching import Step, StepBatcher
from polling.store import ms_to_dt

from . import gcfreeze, heartbeat  # noqa: F401  (signal handlers: GC freeze, heartbeats, sent-at)
from .app import app, settings
from .outbox import Outbox
from .queues import POLLING
from .runtime import get_runtime

log = logging.getLogger(__name__)


@app.task(name="pollctl.poll_batch", ignore_result=True)
def poll_batch(steps: list[list]) -> dict[str, int]:
    """One step of each chain in `steps` ([gateway id, token, slot ms], slots in one
    window); sends the successors of the chains it advanced, batched again."""
    result = batch.poll_batch(get_runtime(), [(int(g), str(t), int(s)) for g, t, s in steps])
    outbox().put(result.next_steps)
    return result.verdicts


@app.task(name="pollctl.poll", ignore_result=True)
def poll(gateway_id: int, token: str, slot_ms: int) -> str:
    """One step of one chain (what `pollctl poll`-era messages still in a queue carry);
    its successor travels in a batch."""
    result = service.poll_step(get_runtime(), gateway_id, token, slot_ms)
    if result.next_ms is not None:
        outbox().put([(gateway_id, token, result.next_ms)])
    return result.verdict


@app.task(name="pollctl.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    rt = get_runtime()
    batcher = step_batcher()
    report = service.reconcile(rt, batcher.add)
    batcher.flush()
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
    batcher = step_batcher()
    diagnosis = diagnostics.diagnose(rt, fix=True, enqueue=batcher.add, canary=send_canary)
    batcher.flush()
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


def send_batch(steps: list[Step]) -> None:
    """Enqueue a batch of chain steps to start at its first slot (never more than one
    interval ahead: every step is a chain's next slot)."""
    first = min(slot for _, _, slot in steps)
    poll_batch.apply_async(([list(s) for s in steps],), eta=ms_to_dt(first), queue=POLLING)


def outbox() -> Outbox:
    """This process's outbox (one per process: a forked child builds its own)."""
    global _outbox, _outbox_pid
    with _outbox_guard:
        if _outbox is None or _outbox_pid != os.getpid():
            window_ms = round(1000 * settings.batch_window)
            _outbox, _outbox_pid = Outbox(send_batch, window_ms, settings.batch_size), os.getpid()
        return _outbox


_outbox: Outbox | None = None
_outbox_pid: int | None = None
_outbox_guard = threading.Lock()


@worker_shutting_down.connect
def _send_held_steps(**_kwargs: object) -> None:
    # A warm shutdown hands every held successor to the broker for the other workers.
    if _outbox is not None:
        _outbox.send_all()


def step_batcher() -> StepBatcher:
    """An `Enqueue` for start, reconcile and diagnostics; call `flush` to send."""
    s = settings
    return StepBatcher(send_batch, round(1000 * s.batch_window), s.batch_size)


def send_poll(gateway_id: int, token: str, slot_ms: int) -> None:
    """Enqueue one chain step on its own."""
    send_batch([(gateway_id, token, slot_ms)])


def send_canary(nonce: str, ttl: float) -> None:
    # Expires with its deadline, so a canary nobody waits for any more is not run.
    canary.apply_async((nonce,), queue=POLLING, expires=ttl)
