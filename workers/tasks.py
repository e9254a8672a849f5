"""Thin tasks: each calls into `polling` and hands what it returns to the step sender."""

from __future__ import annotations

import logging
import os
import threading

from celery.signals import worker_shutting_down

from polling import diagnostics, pipeline, service
from polling.schedule import ms_to_dt
from polling.steps import Step, StepSender

from . import gcfreeze, heartbeat  # noqa: F401  (signal handlers: GC freeze, heartbeats, sent-at)
from .app import app, settings
from .queues import POLLING
from .runtime import get_runtime

log = logging.getLogger(__name__)


@app.task(name="pollctl.poll_batch", ignore_result=True)
def poll_batch(steps: list[list]) -> dict[str, int]:
    """One step of each chain in `steps` ([gateway id, token, slot ms], slots in one
    window); the successors of the chains it advanced go to this process's sender."""
    result = pipeline.poll_batch(get_runtime(), [(int(g), str(t), int(s)) for g, t, s in steps])
    sender().put(result.successors)
    return {str(outcome): n for outcome, n in result.outcomes.items()}


@app.task(name="pollctl.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    rt = get_runtime()
    steps = step_sender()
    report = service.reconcile(rt, steps.add)
    steps.send_all()
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
    steps = step_sender()
    diagnosis = diagnostics.diagnose(rt, fix=True, enqueue=steps.add, canary=send_canary)
    steps.send_all()
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


def step_sender() -> StepSender:
    """A sender for one operation (start, reconcile, a repair): call `send_all` at its end."""
    return StepSender(send_batch, round(1000 * settings.batch_window), settings.batch_size)


def sender() -> StepSender:
    """This process's sender of successors, with its thread (a forked child builds its own)."""
    global _sender, _sender_pid
    with _sender_guard:
        if _sender is None or _sender_pid != os.getpid():
            _sender, _sender_pid = step_sender().start(), os.getpid()
        return _sender


_sender: StepSender | None = None
_sender_pid: int | None = None
_sender_guard = threading.Lock()


@worker_shutting_down.connect
def _send_held_steps(**_kwargs: object) -> None:
    # A warm shutdown hands every held successor to the broker for the other workers.
    if _sender is not None:
        _sender.stop()


def send_poll(gateway_id: int, token: str, slot_ms: int) -> None:
    """Enqueue one chain step on its own."""
    send_batch([(gateway_id, token, slot_ms)])


def send_canary(nonce: str, ttl: float) -> None:
    # Expires with its deadline, so a canary nobody waits for any more is not run.
    canary.apply_async((nonce,), queue=POLLING, expires=ttl)
