"""What a monitor is told, from the newest diagnostics run and its age."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from polling.healthview import fleet_health

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


def check(status: str, message: str = "m") -> dict:
    return {"status": status, "message": message}


@pytest.mark.parametrize(
    ("statuses", "age_s", "health"),
    [
        ({"redis": "healthy", "workers": "healthy"}, 5, "healthy"),
        ({"redis": "healthy", "queues": "warning"}, 5, "degraded"),
        ({"redis": "healthy", "workers": "error"}, 5, "critical"),
        # A run older than three periods (and a minute): beat stopped running them.
        ({"redis": "healthy"}, 61, "critical"),
        ({"redis": "healthy"}, 59, "healthy"),
    ],
)
def test_worst_component_decides(statuses, age_s, health):
    checks = {name: check(status) for name, status in statuses.items()}
    result = fleet_health(checks, NOW - timedelta(seconds=age_s), NOW, period_s=10)
    assert result.health == health
    assert set(result.components) == {*statuses, "diagnostics"}


def test_no_run_recorded_is_critical_and_says_why():
    result = fleet_health(None, None, NOW, period_s=30)
    assert result.health == "critical"
    assert "is beat running" in result.components["diagnostics"].message
    assert result.as_json(NOW)["ran_at"] is None


def test_json_names_the_run_time_in_utc_with_z():
    ran = NOW - timedelta(seconds=4)
    data = fleet_health({"redis": check("healthy")}, ran, NOW, period_s=30).as_json(NOW)
    assert data["ran_at"] == "2026-12-04T11:59:56.000Z" and data["age_s"] == 4.0
    assert data["components"]["redis"] == {"health": "healthy", "message": "m"}
