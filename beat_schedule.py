"""Celery beat entries: the periodic reconcile that keeps one chain per active gateway."""

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
    }
