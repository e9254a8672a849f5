"""What one worker process keeps: its `polling.Runtime` (connections) and the sender of its
chains' successors. Built in Celery's process hooks (a prefork child builds its
own: connections are never shared across a fork), or on first use elsewhere."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from polling import configcache
from polling.runtime import Runtime
from polling.steps import SiteSenders

from .senders import step_sender

if TYPE_CHECKING:
    from .app import PollctlApp


@dataclass(frozen=True)
class Process:
    pid: int
    runtime: Runtime
    #: Holds successors until shortly before their window; its thread sends them.
    sender: SiteSenders


_current: Process | None = None
_guard = threading.Lock()


def current(app: PollctlApp) -> Process:
    """This process's state, built once per process (and per fork) from `app`."""
    global _current
    with _guard:
        if _current is None or _current.pid != os.getpid():
            runtime = Runtime.build(app.settings)
            sender = step_sender(app, app.settings, configcache.names(runtime)).start()
            _current = Process(os.getpid(), runtime, sender)
        return _current


def stop() -> None:
    """Hand every held successor to the broker (a warm shutdown), for the other workers."""
    if _current is not None and _current.pid == os.getpid():
        _current.sender.stop()
