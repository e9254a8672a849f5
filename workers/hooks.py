"""pollctl's hooks into a Celery process's life, wired in one place by `create_app`:

setup_logging         pollctl's log lines (polling/logsetup.py) instead of Celery's
before_task_publish   every message is stamped with when it was sent
worker_process_init   a prefork child builds its own state and freezes its GC
worker_ready          the main process builds its state (a threads or solo pool runs
                      tasks there), starts the heartbeat and freezes its GC
worker_shutting_down  held successors go to the broker, and those of batches still
                      running as they end; the threads stop
worker_process_shutdown  a prefork child sends what it holds before it exits
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery.signals import (
    before_task_publish,
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)

from polling import logsetup
from polling.fleetclock import FleetClock

from . import process
from .gcfreeze import GcFreeze
from .heartbeat import Heartbeat, stamp_sent_at, stamp_with

if TYPE_CHECKING:
    from .app import PollctlApp

#: What this process started and stops at shutdown (heartbeat, GC freeze).
_threads: list[Heartbeat | GcFreeze] = []


def wire(app: PollctlApp) -> None:
    """Connect the hooks (once per process: a second app replaces nothing)."""
    settings = app.settings

    def child_started(**_: Any) -> None:
        stamp_with(process.current(app).runtime.clock)
        _freeze_gc()

    def ready(sender: Any, **_: Any) -> None:
        clock = process.current(app).runtime.clock
        stamp_with(clock)
        queues = tuple(sorted(sender.app.amqp.queues.consume_from))
        if isinstance(clock, FleetClock):
            _threads.append(Heartbeat(app, clock, sender.hostname, queues).start())
        _freeze_gc()

    def _freeze_gc() -> None:
        if settings.gc_refreeze_seconds > 0:
            _threads.append(GcFreeze(settings.gc_refreeze_seconds).start())

    def child_stopping(**_: Any) -> None:
        process.stop()

    def shutting_down(**_: Any) -> None:
        process.stop()  # a warm shutdown hands held successors to the other workers
        for thread in _threads:
            thread.stop()

    def configure_logging(loglevel: Any = None, **_: Any) -> None:
        # Connected, this replaces Celery's own set-up: our lines (JSON off a terminal).
        logsetup.configure(loglevel or "INFO", settings.log_format)

    setup_logging.connect(configure_logging, weak=False, dispatch_uid="pollctl-logging")
    before_task_publish.connect(stamp_sent_at, weak=False, dispatch_uid="pollctl-sent-at")
    worker_process_init.connect(child_started, weak=False, dispatch_uid="pollctl-child")
    worker_process_shutdown.connect(child_stopping, weak=False, dispatch_uid="pollctl-child-end")
    worker_ready.connect(ready, weak=False, dispatch_uid="pollctl-ready")
    worker_shutting_down.connect(shutting_down, weak=False, dispatch_uid="pollctl-shutdown")
