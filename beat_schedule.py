"""Celery beat entries: the periodic reconcile that keeps one chain per active gateway, and
the diagnostics run that applies the other safe repairs and records what it did."""

from __future__ import annotations

from typing import Any

from polling.settings import Settings
from workers.queues import DIAGNOSE_TASK, RECONCILE_TASK, SCHEDULING


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    period = settings.reconcile_seconds
    return {
        "reconcile-chains": {
            "task": RECONCILE_TASK,
            "schedule": period,
            # A reconcile that waited longer than its period is superseded by the next.
            "options": {"queue": SCHEDULING, "expires": period},
        },
        "diagnostics": {
            "task": DIAGNOSE_TASK,
            "schedule": settings.diagnostics_seconds,
            "options": {"queue": SCHEDULING, "expires": settings.diagnostics_seconds},
        },
    }
