"""Health checks over the live system; `pollctl validate` turns them into an exit code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

from .errors import ServiceUnavailable
from .migrate import is_at_head
from .runtime import Runtime, check_redis
from .service import is_overdue
from .store import load_gateways

Status = Literal["healthy", "warning", "error"]
SEVERITY: dict[str, int] = {"healthy": 0, "warning": 1, "error": 2}


@dataclass(frozen=True)
class CheckResult:
    component: str
    status: Status
    message: str
    details: dict = field(default_factory=dict)
    recommendations: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return asdict(self)


def check_services(rt: Runtime) -> list[CheckResult]:
    results = []
    try:
        check_redis(rt.redis, rt.settings.redis_url)
        results.append(CheckResult("redis", "healthy", "reachable"))
    except ServiceUnavailable as exc:
        return [CheckResult("redis", "error", str(exc), recommendations=["start Redis"])]
    try:
        migrated = is_at_head(rt.engine)
    except Exception as exc:
        msg = f"database unreachable: {exc}".splitlines()[0]
        return [*results, CheckResult("database", "error", msg)]
    if not migrated:
        return [
            *results,
            CheckResult(
                "database", "error", "schema not at head", recommendations=["pollctl db upgrade"]
            ),
        ]
    return [*results, CheckResult("database", "healthy", "reachable and migrated")]


def check_schedules(rt: Runtime) -> CheckResult:
    """Every active gateway has exactly one live, punctual chain; no other has one."""
    with rt.sessions() as session:
        gateways = {g.id: g for g in load_gateways(session)}
    chains = rt.chains.all()
    now = rt.clock()
    missing, overdue, stray = [], [], []
    for gateway in gateways.values():
        chain = chains.get(gateway.id)
        if gateway.active and chain is None:
            missing.append(gateway.config.name)
        elif gateway.active and chain and is_overdue(rt, gateway, chain, now):
            overdue.append(gateway.config.name)
    for gateway_id in chains:
        owner = gateways.get(gateway_id)
        if owner is None or not owner.active:
            stray.append(owner.config.name if owner else f"#{gateway_id}")
    details = {"missing": missing, "overdue": overdue, "stray": stray}
    active = sum(g.active for g in gateways.values())
    if missing or overdue:
        return CheckResult(
            "schedules",
            "error",
            f"{len(missing)} active gateways without a chain, {len(overdue)} overdue",
            details,
            [
                "make sure `celery -A workers.app worker -Q polling` and "
                "`celery -A workers.app beat` are running (beat's reconcile restarts chains)",
                "or run `pollctl reconcile` once",
            ],
        )
    if stray:
        return CheckResult(
            "schedules",
            "warning",
            f"{len(stray)} chains for inactive gateways",
            details,
            ["run `pollctl reconcile` to retire them"],
        )
    stopped = sum(g.enabled and not g.polling for g in gateways.values())
    note = f" ({stopped} enabled but stopped by `pollctl stop`)" if stopped else ""
    return CheckResult(
        "schedules", "healthy", f"{active} active gateways, one live chain each{note}"
    )


def check_failures(rt: Runtime) -> CheckResult:
    with rt.sessions() as session:
        gateways = load_gateways(session)
    disabled = {g.config.name: g.disabled_reason for g in gateways if g.disabled_reason}
    if disabled:
        return CheckResult(
            "gateways",
            "warning",
            f"{len(disabled)} gateways auto-disabled",
            {"disabled": disabled},
            ["fix the device, then `pollctl start --gateway NAME`"],
        )
    return CheckResult("gateways", "healthy", "none auto-disabled")


CHECKS: tuple[Callable[[Runtime], CheckResult], ...] = (check_schedules, check_failures)


def run_checks(rt: Runtime) -> list[CheckResult]:
    results = check_services(rt)
    if any(r.status == "error" for r in results):
        return results
    return results + [check(rt) for check in CHECKS]


def exit_code(results: list[CheckResult]) -> int:
    return max((SEVERITY[r.status] for r in results), default=0)
