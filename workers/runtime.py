"""One `polling.Runtime` per worker process (and per fork), built on first use."""

from __future__ import annotations

import os
import threading

from polling.runtime import Runtime

from .app import settings

_runtime: Runtime | None = None
_pid: int | None = None
_guard = threading.Lock()


def get_runtime() -> Runtime:
    """Connections are never shared across a fork: a child builds its own."""
    global _runtime, _pid
    with _guard:
        if _runtime is None or _pid != os.getpid():
            _runtime, _pid = Runtime.build(settings), os.getpid()
        return _runtime
