"""What a check returns, and what it is given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

from ..queueview import QueueInspector
from ..runtime import Runtime

Status = Literal["healthy", "warning", "error"]
SEVERITY: dict[str, int] = {"healthy": 0, "warning": 1, "error": 2}

#: Sends a poll task: (gateway id, token, slot ms, site).
Enqueue = Callable[[int, str, int, str], None]
#: Sends a canary task to a site's polling queue with this nonce, to expire after `ttl` s:
#: (nonce, ttl, site).
SendCanary = Callable[[str, float, str], None]
#: Hostnames of the workers that answer over the broker and consume the polling queue.
ListConsumers = Callable[[], list[str]]


@dataclass(frozen=True)
class CheckResult:
    component: str
    status: Status
    message: str
    details: dict = field(default_factory=dict)
    recommendations: list[str] = field(default_factory=list)
    #: A safe repair exists for what this check found (`validate --fix` applies it).
    fixable: bool = False

    def as_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Context:
    """A check's view of the system. The Celery side lends what needs Celery: sending a
    poll (to restart a chain), a canary (to prove workers consume `polling`), and a view
    of the broker's queues."""

    rt: Runtime
    enqueue: Enqueue | None = None
    canary: SendCanary | None = None
    queues: QueueInspector | None = None
    consumers: ListConsumers | None = None


def healthy(component: str, message: str, **details: object) -> CheckResult:
    return CheckResult(component, "healthy", message, dict(details))


def graded(value: float, warning: float, critical: float) -> Status:
    """healthy up to `warning`, warning up to `critical`, error above."""
    if value > critical:
        return "error"
    if value > warning:
        return "warning"
    return "healthy"
