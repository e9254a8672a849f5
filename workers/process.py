"""What one worker process keeps: its `polling.Runtime` (connections) and the sender of its
chains' successors. Built by `start` in Celery's process hooks (a prefork child builds its
own: connections are never shared across a fork), or on first use elsewhere."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from celery import current_app

from polling.runtime import Runtime
from polling.settings import Settings
from polling.steps import StepSender

from .senders import step_sender


@dataclass(frozen=True)
class Process:
    pid: int
    runtime: Runtime
    #: Holds successors until shortly before their window; its thread sends them.
    sender: StepSender


_current: Process | None = None
_guard = threading.Lock()


def start(settings: Settings) -> Process:
    """This process's state, built once per process."""
    global _current
    with _guard:
        if _current is None or _current.pid != os.getpid():
            runtime = Runtime.build(settings)
            _current = Process(os.getpid(), runtime, step_sender(settings).start())
        return _current


def current() -> Process:
    return start(current_app.settings)


def stop() -> None:
    """Hand every held successor to the broker (a warm shutdown), for the other workers."""
    if _current is not None and _current.pid == os.getpid():
        _current.sender.stop()
