"""Sending chain steps and canaries through a given app (a worker's, or the one a command
builds)."""

from __future__ import annotations

from functools import partial

from celery import Celery

from polling.schedule import ms_to_dt
from polling.settings import Settings
from polling.steps import Step, StepSender

from .queues import CANARY_TASK, POLL_BATCH_TASK, POLLING


def send_batch(app: Celery, steps: list[Step]) -> None:
    """Enqueue a batch of chain steps to start at its first slot (never more than one
    interval ahead: every step is a chain's next slot)."""
    first = min(slot for _, _, slot in steps)
    app.send_task(POLL_BATCH_TASK, ([list(s) for s in steps],), eta=ms_to_dt(first), queue=POLLING)


def send_poll(app: Celery, gateway_id: int, token: str, slot_ms: int) -> None:
    """Enqueue one chain step on its own."""
    send_batch(app, [(gateway_id, token, slot_ms)])


def send_canary(app: Celery, nonce: str, ttl: float) -> None:
    # Expires with its deadline, so a canary nobody waits for any more is not run.
    app.send_task(CANARY_TASK, (nonce,), queue=POLLING, expires=ttl)


def step_sender(app: Celery, settings: Settings) -> StepSender:
    """A sender through `app`; for one operation (start, reconcile, a repair), call
    `send_all` at its end."""
    window_ms = round(1000 * settings.batch_window)
    return StepSender(partial(send_batch, app), window_ms, settings.batch_size)
