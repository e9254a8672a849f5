"""The broker's queues as diagnostics and audit see them: depths, ages and the chain steps
waiting or held, as values. The Celery side reads them (`workers.broker`) and lends a
`QueueInspector` to the checks, the way it lends `enqueue` and `canary`; nothing here
knows a queue name or a key of the broker's layout."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class QueueState:
    name: str
    waiting: int
    #: Seconds the oldest waiting message has been due (None when the queue is empty).
    oldest_age: float | None


@dataclass(frozen=True)
class UnackedState:
    #: Messages delivered to workers and not yet acknowledged (ETA tasks wait here).
    count: int
    #: Seconds since the oldest of them was delivered.
    oldest_age: float | None


@dataclass(frozen=True)
class QueuedStep:
    """One chain step found in a poll message, waiting in a queue or held by a worker."""

    gateway_id: int
    token: str
    slot_ms: int
    #: A worker holds the message (delivered, not acknowledged): it cannot be removed.
    held: bool
    #: The message that carries it (opaque; steps of one message share it).
    message: Hashable
    #: Steps the message carries, this one included.
    size: int = 1


class QueueInspector(Protocol):
    def queues(self, now_ms: int) -> list[QueueState]:
        """Every queue of the app, the polling queue first."""
        ...

    def unacked(self, now_ms: int) -> UnackedState: ...

    def queued_steps(self) -> Iterator[QueuedStep]:
        """Every chain step waiting in the polling queue or held by a worker."""
        ...

    def remove(self, step: QueuedStep) -> bool:
        """Take the waiting message that carries `step` off its queue (never a held one)."""
        ...
