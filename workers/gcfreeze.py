"""Keep a worker's long-lived objects out of Python's full collections.

A polling worker holds a few hundred thousand objects for its whole life (modules, the
Celery app, each gateway's plan and open Modbus connection). Every full (generation 2)
collection walked them all: at 1,000 gateways one ran every 6 to 8 s and held the GIL for
120-190 ms, which was most of the p99 lateness. `gc.freeze()` moves what is alive into a
permanent generation the collector skips. A thread freezes what has settled in the oldest
generation whenever it has grown by a good share of what is frozen (at start, and as
gateways open their connections). Refcounting still frees frozen objects; only a frozen
cycle that dies stays until the periodic refresh, which unfreezes and runs one full
collection (the old pause, once per period instead of every few seconds) before freezing
again.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: How often the thread looks at the oldest generation.
CHECK_SECONDS = 10.0
#: The oldest generation is frozen once it holds this many objects and this share of what
#: is frozen already. Low, because what reaches the oldest generation is mostly there to
#: stay: at 10,000 gateways the gateways a worker loads after its last freeze (planned,
#: about 100,000 objects: points, requests, grids) stayed below CPython's own quarter rule
#: (of 700,000 frozen) and every full collection walked them, 75 ms every 5 s. Freezing
#: what dies later costs nothing: refcounting frees frozen objects too.
GROWTH_MIN = 20_000
GROWTH_SHARE = 0.02
#: Allocations between young collections (CPython's default is 700). A worker allocates
#: tens of thousands of short-lived objects a second (messages, frames, readings); at the
#: default they were collected 20 times a second and what outlived a collection by chance
#: was promoted, driving full collections: at 10,000 gateways 4 % of a core went to the
#: collector, 1 % at this threshold.
YOUNG_THRESHOLD = 10_000


def freeze_new() -> int:
    """Collect what is not frozen, then freeze what survived; the count frozen in all."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def refreeze() -> int:
    """Collect everything, frozen or not, then freeze what survived; the count frozen."""
    gc.unfreeze()
    return freeze_new()


def has_grown(unfrozen: int, frozen: int) -> bool:
    """Whether the oldest generation holds enough unfrozen objects to freeze them too."""
    return unfrozen > max(GROWTH_MIN, GROWTH_SHARE * frozen)


def _timed(freeze: Callable[[], int], why: str) -> None:
    started = time.perf_counter()
    frozen = freeze()
    took = (time.perf_counter() - started) * 1e3
    log.info("gc %s: %d objects frozen in %.0f ms", why, frozen, took)


class GcFreeze:
    """Freezes what settles, from a thread: checks every `CHECK_SECONDS`, refreshes every
    `period` seconds."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._stop = threading.Event()

    def start(self) -> GcFreeze:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
        threading.Thread(target=self._run, name="pollctl-gc", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        refreshed = time.monotonic()
        while not self._stop.wait(CHECK_SECONDS):
            if time.monotonic() - refreshed >= self.period:
                _timed(refreeze, "refreshed")
                refreshed = time.monotonic()
            elif has_grown(len(gc.get_objects(generation=2)), gc.get_freeze_count()):
                _timed(freeze_new, "grown")
