"""pollctl's hooks into a Celery process's life, wired in one place by `create_app`:

setup_logging         pollctl's log lines (polling/logsetup.py) instead of Celery's
celeryd_after_setup   a polling worker (`-Q polling`) consumes the queues of the sites
                      POLLING_SITES names instead (`default` alone: `polling`)
before_task_publish   every message is stamped with when it was sent
worker_process_init   a prefork child builds its own state and freezes its GC
worker_ready          the main process builds its state (a threads or solo pool runs
                      tasks there), starts the heartbeat and freezes its GC; under
                      systemd, tells it READY=1 and starts the watchdog
task_received         under systemd: a message arrived (the watchdog's evidence)
worker_shutting_down  held successors go to the broker, and those of batches still
                      running as they end; the threads stop
worker_process_shutdown  a prefork child sends what it holds before it exits

and, under systemd (NOTIFY_SOCKET), a consumer bootstep that samples the consumer on its
event loop for the watchdog (`workers/watchdog.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import (
    before_task_publish,
    celeryd_after_setup,
    setup_logging,
    task_received,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)

from polling import logsetup
from polling.fleetclock import FleetClock
from polling.keys import Keys

from . import process
from .gcfreeze import GcFreeze
from .heartbeat import Heartbeat, stamp_sent_at, stamp_with
from .queues import served_sites, worker_queues
from .watchdog import Watchdog, broker_queues

if TYPE_CHECKING:
    from .app import PollctlApp

#: What this process started and stops at shutdown (heartbeat, GC freeze, watchdog).
_threads: list[Heartbeat | GcFreeze | Watchdog] = []


def wire(app: PollctlApp) -> None:
    """Connect the hooks (once per process: a second app replaces nothing)."""
    settings = app.settings
    watchdog = _watchdog(app)

    def child_started(**_: Any) -> None:
        stamp_with(process.current(app).runtime.clock)
        _freeze_gc()

    def ready(sender: Any, **_: Any) -> None:
        clock = process.current(app).runtime.clock
        stamp_with(clock)
        queues = tuple(sorted(sender.app.amqp.queues.consume_from))
        _threads.extend(_watchers(app, clock, sender.hostname, queues, watchdog))
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

    def select_sites(instance: Any, **_: Any) -> None:
        consume_sites(instance.app, settings.site_list)

    def configure_logging(loglevel: Any = None, **_: Any) -> None:
        # Connected, this replaces Celery's own set-up: our lines (JSON off a terminal).
        logsetup.configure(loglevel or "INFO", settings.log_format)

    setup_logging.connect(configure_logging, weak=False, dispatch_uid="pollctl-logging")
    celeryd_after_setup.connect(select_sites, weak=False, dispatch_uid="pollctl-sites")
    before_task_publish.connect(stamp_sent_at, weak=False, dispatch_uid="pollctl-sent-at")
    worker_process_init.connect(child_started, weak=False, dispatch_uid="pollctl-child")
    worker_process_shutdown.connect(child_stopping, weak=False, dispatch_uid="pollctl-child-end")
    worker_ready.connect(ready, weak=False, dispatch_uid="pollctl-ready")
    worker_shutting_down.connect(shutting_down, weak=False, dispatch_uid="pollctl-shutdown")


def consume_sites(app: Celery, sites: tuple[str, ...]) -> list[str]:
    """After `-Q` was applied: a polling worker consumes the queues of `sites` in place of
    `polling` (see `queues.worker_queues`), polling queues first, as the transport consumes
    in the order of selection. Returns the queues it consumes."""
    queues = app.amqp.queues
    consuming = queues.consume_from
    wanted = worker_queues(list(consuming), sites)
    chosen = {name: consuming.get(name) or queues.select_add(name) for name in wanted}
    consuming.clear()
    consuming.update(chosen)
    return wanted


def _watchdog(app: PollctlApp) -> Watchdog | None:
    """Under systemd, the watchdog with its evidence wired: a consumer bootstep sampling
    the event loop, and every message's arrival."""
    watchdog = Watchdog.from_env()
    if watchdog is not None:
        app.steps["consumer"].add(watchdog.consumption.step())
        received = watchdog.consumption.received
        task_received.connect(received, weak=False, dispatch_uid="pollctl-received")
    return watchdog


def _watchers(
    app: PollctlApp,
    clock: Callable[[], int],
    hostname: str,
    queues: tuple[str, ...],
    watchdog: Watchdog | None,
) -> list[Heartbeat | Watchdog]:
    """The heartbeat (on a fleet clock) and, under systemd, the watchdog, started on the
    queues the worker was started with; the heartbeat tells the watchdog which of them it
    leaves on purpose (polling, while the clock is off)."""
    heartbeat = None
    if isinstance(clock, FleetClock):
        heartbeat = Heartbeat(app, clock, hostname, queues).start()
    started: list[Heartbeat | Watchdog] = [heartbeat] if heartbeat is not None else []
    if watchdog is not None:
        settings = app.settings
        prefix = Keys(settings.key_prefix).broker
        read = broker_queues(settings.redis_url, prefix, clock, served_sites(queues))
        aside = heartbeat.set_aside if heartbeat is not None else frozenset
        started.append(watchdog.start(frozenset(queues), aside, read))
    return started
