"""Sending chain steps and canaries through the current app (whatever process builds it:
a worker, beat's tasks, the CLI)."""

from __future__ import annotations

from celery import current_app

from polling.schedule import ms_to_dt
from polling.settings import Settings
from polling.steps import Step, StepSender

from .queues import CANARY_TASK, POLL_BATCH_TASK, POLLING


def send_batch(steps: list[Step]) -> None:
    """Enqueue a batch of chain steps to start at its first slot (never more than one
    interval ahead: every step is a chain's next slot)."""
    first = min(slot for _, _, slot in steps)
    current_app.send_task(
        POLL_BATCH_TASK, ([list(s) for s in steps],), eta=ms_to_dt(first), queue=POLLING
    )


def send_poll(gateway_id: int, token: str, slot_ms: int) -> None:
    """Enqueue one chain step on its own."""
    send_batch([(gateway_id, token, slot_ms)])


def send_canary(nonce: str, ttl: float) -> None:
    # Expires with its deadline, so a canary nobody waits for any more is not run.
    current_app.send_task(CANARY_TASK, (nonce,), queue=POLLING, expires=ttl)


def step_sender(settings: Settings) -> StepSender:
    """A sender for one operation (start, reconcile, a repair): call `send_all` at its end."""
    return StepSender(send_batch, round(1000 * settings.batch_window), settings.batch_size)
