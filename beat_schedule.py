"""Celery beat entries: the periodic reconcile that keeps one chain per active gateway, the
diagnostics run that applies the other safe repairs and records what it did, and the daily
retention cleanup."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from polling.settings import Settings
from workers.queues import CLEANUP_TASK, DIAGNOSE_TASK, RECONCILE_TASK, SCHEDULING

#: Just past midnight UTC: the day that has just passed its retention goes whole.
CLEANUP_AT = crontab(hour=0, minute=10)


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
        "retention-cleanup": {
            "task": CLEANUP_TASK,
            "schedule": CLEANUP_AT,
            # Missed by an hour (beat or the scheduling workers down), tomorrow's run does it.
            "options": {"queue": SCHEDULING, "expires": 3600},
        },
    }
