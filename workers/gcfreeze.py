"""Keep a worker's long-lived objects out of Python's full collections.

A polling worker holds a few hundred thousand objects for its whole life (modules, the
Celery app, each gateway's plan and open Modbus connection). Every full (generation 2)
collection walked them all: at 1,000 gateways one ran every 6 to 8 s and held the GIL for
120-190 ms, which was most of the p99 lateness. `gc.freeze()` moves what is alive into a
permanent generation the collector skips. Refcounting still frees frozen objects; only a
frozen cycle that dies stays until the next refresh, which unfreezes and runs one full
collection (the old pause, once per period instead of every few seconds) before freezing
again."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutting_down

from .app import settings

log = logging.getLogger(__name__)

#: Seconds after start of the first freezes: once the app is loaded, and again once the
#: first rounds of polls have opened the gateways' connections.
WARM_UP = (10.0, 60.0)

_stop = threading.Event()
_started_in: set[int] = set()


def refreeze() -> int:
    """Collect everything, frozen or not, then freeze what survived; the count frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _run(period: float) -> None:
    for delay in WARM_UP:
        if _stop.wait(delay):
            return
        _timed_refreeze()
    while not _stop.wait(period):
        _timed_refreeze()


def _timed_refreeze() -> None:
    started = time.perf_counter()
    frozen = refreeze()
    log.info("gc: %d objects frozen in %.0f ms", frozen, (time.perf_counter() - started) * 1e3)


@worker_ready.connect
@worker_process_init.connect
def _start(**_: Any) -> None:
    # worker_ready runs in the main process (the threads pool's only one),
    # worker_process_init in each prefork child; one thread per process.
    pid = os.getpid()
    if settings.gc_refreeze_seconds <= 0 or pid in _started_in:
        return
    _started_in.add(pid)
    threading.Thread(
        target=_run, args=(settings.gc_refreeze_seconds,), name="pollctl-gc", daemon=True
    ).start()


@worker_shutting_down.connect
def _stop_refreezing(**_: Any) -> None:
    _stop.set()
