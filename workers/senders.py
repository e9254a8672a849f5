"""Sending chain steps and canaries through a given app (a worker's, or the one a command
builds)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from celery import Celery

from polling.schedule import ms_to_dt
from polling.settings import Settings
from polling.sites import DEFAULT_SITE
from polling.steps import SiteSenders, Step, StepSender

from .queues import CANARY_TASK, POLL_BATCH_TASK, PROBE_TASK, site_queue

#: A gateway's name by id, when known (for how a batch shows in Flower and the logs).
NameOf = Callable[[int], str | None]


def send_batch(
    app: Celery, steps: list[Step], name_of: NameOf | None = None, site: str = DEFAULT_SITE
) -> None:
    """Enqueue a batch of chain steps (all of gateways on `site`) on the site's queue, to
    start at its first slot (never more than one interval ahead: every step is a chain's
    next slot). Its `argsrepr` names each gateway and slot, so an operator finds a
    gateway's polls in Flower by its name."""
    first = min(slot for _, _, slot in steps)
    app.send_task(
        POLL_BATCH_TASK,
        ([list(s) for s in steps],),
        # The default site's messages stay as they were, for workers of the last release.
        kwargs={} if site == DEFAULT_SITE else {"site": site},
        eta=ms_to_dt(first),
        queue=site_queue(site),
        argsrepr=describe(steps, name_of or (lambda _: None)),
    )


def describe(steps: list[Step], name_of: NameOf) -> str:
    """`boiler-room 12:00:01.250, #42 12:00:01.300`: each step's gateway and slot (UTC)."""
    return ", ".join(
        f"{name_of(gateway_id) or f'#{gateway_id}'} {ms_to_dt(slot):%H:%M:%S.%f}"[:-3]
        for gateway_id, _, slot in steps
    )


def send_poll(
    app: Celery, gateway_id: int, token: str, slot_ms: int, site: str = DEFAULT_SITE
) -> None:
    """Enqueue one chain step on its own (an `Enqueue`)."""
    send_batch(app, [(gateway_id, token, slot_ms)], site=site)


def send_canary(app: Celery, nonce: str, ttl: float, site: str = DEFAULT_SITE) -> None:
    # Expires with its deadline, so a canary nobody waits for any more is not run.
    app.send_task(CANARY_TASK, (nonce,), queue=site_queue(site), expires=ttl)


def send_probe(app: Celery, gateway_id: int, ttl: float, site: str = DEFAULT_SITE) -> None:
    """Recovery's probe of a gateway its failures disabled, on its site's queue; expires
    with the lease its claim took (the probe is claimed again after that)."""
    app.send_task(PROBE_TASK, (gateway_id,), queue=site_queue(site), expires=ttl)


def send_command(app: Celery, task: str, args: tuple, site: str, expires: float) -> None:
    """A command for a worker of `site` (polling/replies.py); not run once `expires` s old."""
    app.send_task(task, args, queue=site_queue(site), expires=expires)


def step_sender(app: Celery, settings: Settings, name_of: NameOf | None = None) -> SiteSenders:
    """A sender through `app`, one per site (batches never mix sites); for one operation
    (start, reconcile, a repair), call `send_all` at its end."""
    window_ms = round(1000 * settings.batch_window)

    def sender_for(site: str) -> StepSender:
        send = partial(send_batch, app, name_of=name_of, site=site)
        return StepSender(send, window_ms, settings.batch_size)

    return SiteSenders(sender_for)
