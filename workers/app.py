"""The Celery app, built from settings by `create_app`. `celery -A workers.app worker|beat`
asks this module for `app`: that one is built from the environment (POLLING_*) when first
asked for, never as a side effect of an import."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery

from beat_schedule import beat_schedule
from polling.errors import ConfigError
from polling.keys import Keys
from polling.settings import Settings

from . import hooks, transport
from .queues import DEFAULT, QUEUES, ROUTES


class PollctlApp(Celery):
    """A Celery app that carries the settings it was built from."""

    settings: Settings


#: How long kombu's restore mutex outlives a worker killed while holding it (a sweep
#: takes milliseconds).
UNACKED_MUTEX_EXPIRE_S = 5


def create_app(settings: Settings) -> PollctlApp:
    """The app for `settings`, with pollctl's process hooks wired (`workers.hooks`) and
    its Redis transport (`workers.transport`) behind `redis://`."""
    transport.install()
    app = PollctlApp(
        "pollctl", broker=settings.redis_url, include=["workers.tasks"], set_as_current=False
    )
    app.settings = settings
    app.conf.update(
        task_queues=QUEUES,
        task_routes=ROUTES,
        task_default_queue=DEFAULT,
        task_serializer="json",
        accept_content=["json"],
        # No result backend: outcomes live in the poll log.
        task_ignore_result=True,
        # Redelivered if the worker dies mid-task; the slot claim keeps a redelivery from
        # polling twice, so this cannot loop on a poison message.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_timer_precision=settings.timer_precision,
        # Back within 2 s of the broker, not Celery's up to 30 s (workers/consumer.py).
        worker_consumer="workers.consumer:PromptConsumer",
        broker_connection_retry_on_startup=True,
        # Keep reconnecting through a Redis outage of any length (the default gives up after
        # 100 tries, about 45 minutes, and the worker exits).
        broker_connection_max_retries=None,
        broker_transport_options={
            # Unacked (and ETA) messages come back after this; intervals are capped below it.
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for messages past the timeout every tenth of it (kombu's default sweep is
            # about 100 s, which would dwarf a short timeout).
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 10)),
            "unacked_restore_throttle": 1,
            # A worker killed mid-sweep leaves the sweep's mutex held until it expires, and
            # no worker restores anything meanwhile: kombu's 300 s, not a few seconds.
            "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_S,
            # Consume queues in the order declared: polling before scheduling and default.
            "queue_order_strategy": "priority",
            # POLLING_KEY_PREFIX covers the broker's keys too (see Keys.broker).
            "global_keyprefix": Keys(settings.key_prefix).broker,
        },
        beat_schedule=beat_schedule(settings),
        beat_scheduler="workers.beat:SingletonScheduler",
        beat_max_loop_interval=1.0,
        timezone="UTC",
        enable_utc=True,
    )
    hooks.wire(app)
    return app


def __getattr__(name: str) -> Any:
    # Celery's command line (`-A workers.app`) looks up `app` here (PEP 562).
    if name == "app":
        try:
            settings = Settings.from_env()
        except ConfigError as exc:
            # A worker, beat or Flower with bad settings must not start (or retry a URL
            # that can never work): the same one line the CLI gives, and exit 1.
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        built = globals()["app"] = create_app(settings)
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
