"""The alert rules, pure: a fleet's state in, findings out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from polling.alerts.rules import (
    FleetState,
    GatewayFacts,
    Limits,
    PointFacts,
    evaluate,
    gateway_rule,
    point_rules,
)
from polling.checks.base import CheckResult, Status

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
LIMITS = Limits(offline_intervals=3)


def gateway(**changes) -> GatewayFacts:
    base = {
        "id": 1,
        "name": "boiler",
        "enabled": True,
        "polling": True,
        "disabled_by_failures": False,
        "disabled_reason": None,
        "interval_s": 10.0,
        "last_ok_at": NOW - timedelta(seconds=5),
        "polling_since": NOW - timedelta(hours=1),
    }
    return GatewayFacts(**{**base, **changes})


def point(recent, **changes) -> PointFacts:
    base = {"gateway_id": 1, "gateway": "boiler", "point": "temp", "min": None, "max": None}
    return PointFacts(**{**base, "flatline": None, "recent": tuple(recent), **changes})


def rules(findings) -> list[tuple[str, str, str]]:
    return [(f.rule, f.subject, f.severity) for f in findings]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, []),
        ({"last_ok_at": NOW - timedelta(seconds=29)}, []),
        ({"last_ok_at": NOW - timedelta(seconds=30)}, ["gateway_offline"]),
        # A fresh start is judged from when it started, not from a success long ago.
        (
            {
                "last_ok_at": NOW - timedelta(days=1),
                "polling_since": NOW - timedelta(seconds=10),
            },
            [],
        ),
        ({"last_ok_at": None, "polling_since": NOW - timedelta(minutes=5)}, ["gateway_offline"]),
        # Stopped, or disabled by the operator: nobody expects polls.
        ({"polling": False, "last_ok_at": None}, []),
        ({"enabled": False, "last_ok_at": None}, []),
        # Disabled by its failures: disabled; offline wins once the intervals have passed.
        (
            {"enabled": False, "disabled_by_failures": True, "disabled_reason": "3 failures"},
            ["gateway_disabled"],
        ),
        (
            {
                "enabled": False,
                "disabled_by_failures": True,
                "last_ok_at": NOW - timedelta(minutes=2),
            },
            ["gateway_offline"],
        ),
    ],
)
def test_a_gateway_has_at_most_one_finding(changes, expected):
    found = gateway_rule(gateway(**changes), NOW, LIMITS)
    assert [f.rule for f in found] == expected
    assert all(f.severity == "critical" and f.gateway_id == 1 for f in found)


@pytest.mark.parametrize(
    ("recent", "changes", "expected"),
    [
        ([20.0], {"min": 10, "max": 30}, []),
        ([5.0], {"min": 10, "max": 30}, ["point_min"]),
        ([31.0], {"max": 30}, ["point_max"]),
        ([], {"min": 10}, []),
        (["text"], {"min": 10}, []),
        ([1.0, 1.0, 1.0], {"flatline": 3}, ["point_flatline"]),
        ([1.0, 1.0], {"flatline": 3}, []),  # not judged on fewer polls than that
        ([1.0, 2.0, 1.0], {"flatline": 3}, []),
        (["on", "on"], {"flatline": 2}, ["point_flatline"]),
        ([50.0, 50.0], {"max": 40, "flatline": 2}, ["point_max", "point_flatline"]),
    ],
)
def test_point_data_rules(recent, changes, expected):
    found = point_rules(point(recent, **changes))
    assert [f.rule for f in found] == expected
    assert all(f.subject == "boiler/temp" and f.severity == "warning" for f in found)


def test_a_gateway_that_is_down_is_one_finding_not_one_per_point():
    state = FleetState(
        NOW,
        gateways=[gateway(last_ok_at=NOW - timedelta(minutes=10)), gateway(id=2, name="other")],
        points=[point([1.0, 1.0], point=name, flatline=2, max=0) for name in ("a", "b", "c")]
        + [point([1.0, 1.0], gateway_id=2, gateway="other", flatline=2)],
    )
    evaluation = evaluate(state, LIMITS)
    assert rules(evaluation.findings) == [
        ("gateway_offline", "boiler", "critical"),
        ("point_flatline", "other/temp", "warning"),
    ]
    assert evaluation.down == {1}


def check(component: str, status: Status = "warning", **details) -> CheckResult:
    return CheckResult(component, status, f"{component} says so", details)


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (check("gateways", failure_rate=0.1, failed=1, polled=10, window_s=300), []),
        (
            check("gateways", failure_rate=0.3, failed=3, polled=10, window_s=300),
            [("failure_rate", "fleet", "warning")],
        ),
        (check("gateways", failure_rate=0.6), [("failure_rate", "fleet", "critical")]),
        (check("gateways", "error"), []),  # a check that broke has no details: no finding
        (
            check(
                "queues",
                polling={"waiting": 3, "oldest_age_s": 31.0},
                scheduling={"waiting": 0, "oldest_age_s": None},
                unacked={"count": 9, "oldest_age_s": 99.0},
            ),
            [("queue_backlog", "queue:polling", "critical")],
        ),
        (
            check("queues", default={"waiting": 20_000, "oldest_age_s": 1.0}),
            [("queue_backlog", "queue:default", "warning")],
        ),
        (
            check("queues", polling={"waiting": 1, "oldest_age_s": 6.0}),
            [("queue_backlog", "queue:polling", "warning")],
        ),
        (
            check("schedules", "error", missing=["a"], overdue=[]),
            [("overdue_chains", "schedules", "critical")],
        ),
        (check("schedules", "warning", missing=[], overdue=[], stray=["x"]), []),
        (check("schedules", "healthy", missing=[], overdue=[]), []),
        (check("buffer", pending=80, limit=100, lost=0), [("buffer", "buffer", "warning")]),
        (check("buffer", pending=79, limit=100, lost=0), []),
        (
            check("buffer", "error", pending=0, limit=100, lost=5),
            [("buffer", "buffer", "critical")],
        ),
        (
            check("workers", "error", workers=[], polling=[]),
            [("no_consumer", "queue:polling", "critical")],
        ),
        (check("workers", "healthy", workers=["w"], polling=["w"]), []),
        (
            check(
                "clocks", skew_ms={"w1 on a": 2500, "w2 on b": -400, "w3 on c": -3000}, bound_s=2
            ),
            [
                ("clock_skew", "clock:w1 on a", "critical"),
                ("clock_skew", "clock:w3 on c", "critical"),
            ],
        ),
        (
            check("overload", shed=400, slots=3000, made_per_s=8.7, offered_per_s=10.0),
            [("overload", "workers", "warning")],
        ),
        (check("overload", "healthy", shed=3, slots=3000), []),  # a pause, below the share
    ],
)
def test_fleet_rules_read_the_diagnostics_results(result, expected):
    state = FleetState(NOW, checks={result.component: result})
    assert rules(evaluate(state, LIMITS).findings) == expected


def test_limits_come_from_the_settings():
    from polling.settings import Settings

    limits = Limits.of(Settings(alert_offline_intervals=7, backlog_critical=99))
    assert (limits.offline_intervals, limits.backlog_critical) == (7, 99)
