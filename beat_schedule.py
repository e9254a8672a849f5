"""Celery beat entries: the periodic reconcile that keeps one chain per active gateway, and
the diagnostics run that applies the other safe repairs and records what it did."""

from __future__ import annotations

from typing import Any

from polling.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    period = settings.reconcile_seconds
    return {
        "reconcile-chains": {
            "task": "pollctl.reconcile",
            "schedule": period,
            # A reconcile that waited longer than its period is superseded by the next.
            "options": {"queue": "scheduling", "expires": period},
        },
        "diagnostics": {
            "task": "pollctl.diagnose",
            "schedule": settings.diagnostics_seconds,
            "options": {"queue": "scheduling", "expires": settings.diagnostics_seconds},
        },
    }
