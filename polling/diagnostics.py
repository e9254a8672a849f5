"""Diagnostics: run the independent checks, apply the safe fixes, grade the whole system.

`pollctl validate` and `pollctl diagnose` run them on demand; beat runs them (with fixes)
every `POLLING_DIAGNOSTICS_SECONDS` and each run is recorded in `diagnostic_runs`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import delete, select

from .checks.alertchannels import check_alert_channels
from .checks.base import SEVERITY, CheckResult, Context
from .checks.fleet import (
    check_buffer,
    check_failures,
    check_limits,
    check_locks,
    check_schedules,
    fix_buffer,
    fix_locks,
    fix_schedules,
)
from .checks.overload import check_overload
from .checks.plans import check_learnt_plans
from .checks.records import check_records
from .checks.serial import check_serial_buses
from .checks.services import (
    check_beat,
    check_clocks,
    check_database_service,
    check_queues,
    check_redis_service,
    check_workers,
)
from .models import DiagnosticRun
from .runtime import Runtime

__all__ = ["CheckResult", "Context", "Diagnosis", "diagnose", "exit_code", "health"]

log = logging.getLogger(__name__)

Health = Literal["healthy", "degraded", "critical"]
#: A check gives one result, or one per site (`check_workers`).
Check = Callable[[Context], CheckResult | list[CheckResult]]
Fix = Callable[[Context, CheckResult], list[str]]

#: Without these the other checks cannot run.
SERVICES: tuple[Check, ...] = (check_redis_service, check_database_service)
CHECKS: tuple[tuple[Check, Fix | None], ...] = (
    (check_workers, None),
    (check_beat, None),
    (check_clocks, None),
    (check_queues, None),
    (check_buffer, fix_buffer),
    (check_schedules, fix_schedules),
    (check_locks, fix_locks),
    (check_failures, None),
    (check_records, None),
    (check_limits, None),
    (check_overload, None),
    (check_serial_buses, None),
    (check_learnt_plans, None),
    (check_alert_channels, None),
)
#: Runs kept in the database.
KEEP_RUNS = 2000


@dataclass
class Diagnosis:
    results: list[CheckResult]
    #: Repairs applied, by component.
    repairs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def health(self) -> Health:
        return health(self.results)

    @property
    def exit_code(self) -> int:
        return exit_code(self.results)


def diagnose(ctx: Context, *, fix: bool = False) -> Diagnosis:
    """Run every check (Redis and the database first: without them nothing else can be
    checked); with `fix`, apply the safe repairs."""
    services = [r for check in SERVICES for r in _run(check, ctx)]
    if any(r.status == "error" for r in services):
        return Diagnosis(services)
    diagnosis = run_checks(ctx, CHECKS, fix=fix)
    return Diagnosis(services + diagnosis.results, diagnosis.repairs)


def run_checks(ctx: Context, checks: Sequence[tuple[Check, Fix | None]], *, fix: bool) -> Diagnosis:
    """Run `checks` in order; with `fix`, apply the safe repair of each that found
    something and check it again, so the results describe the system as it is left."""
    results: list[CheckResult] = []
    repairs: dict[str, list[str]] = {}
    for check, repair in checks:
        found = _run(check, ctx)
        if fix and repair is not None and len(found) == 1 and found[0].fixable:
            actions = repair(ctx, found[0])
            if actions:
                repairs[found[0].component] = actions
                found = _run(check, ctx)
        results += found
    return Diagnosis(results, repairs)


def _run(check: Check, ctx: Context) -> list[CheckResult]:
    """A check that breaks is itself a finding, not the end of the diagnosis."""
    try:
        result = check(ctx)
    except Exception as exc:
        log.exception("check %s failed", check.__name__)
        component = check.__name__.removeprefix("check_")
        result = CheckResult(component, "error", f"check failed: {type(exc).__name__}: {exc}")
    return result if isinstance(result, list) else [result]


def exit_code(results: list[CheckResult]) -> int:
    """0 healthy, 1 warnings, 2 errors: what `pollctl validate` exits with."""
    return max((SEVERITY[r.status] for r in results), default=0)


def health(results: list[CheckResult]) -> Health:
    return ("healthy", "degraded", "critical")[exit_code(results)]  # type: ignore[return-value]


def record(rt: Runtime, diagnosis: Diagnosis) -> None:
    """Keep what a run found and repaired; older runs beyond KEEP_RUNS are deleted."""
    findings = {r.component: r.message for r in diagnosis.results if r.status != "healthy"}
    checks = {r.component: {"status": r.status, "message": r.message} for r in diagnosis.results}
    _keep(
        rt,
        DiagnosticRun(
            health=diagnosis.health, findings=findings, repairs=diagnosis.repairs, checks=checks
        ),
    )


def record_reconcile(rt: Runtime, actions: list[str]) -> None:
    """The frequent reconcile repairs schedules between diagnostics runs: keep its repairs
    in the same record (a run that had to repair found the system degraded)."""
    findings = {"schedules": "chains had drifted from the active gateways"}
    _keep(rt, DiagnosticRun(health="degraded", findings=findings, repairs={"schedules": actions}))


def _keep(rt: Runtime, run: DiagnosticRun) -> None:
    with rt.sessions() as session, session.begin():
        session.add(run)
        session.flush()
        cutoff = session.scalar(
            select(DiagnosticRun.id).order_by(DiagnosticRun.id.desc()).offset(KEEP_RUNS).limit(1)
        )
        if cutoff is not None:
            session.execute(delete(DiagnosticRun).where(DiagnosticRun.id <= cutoff))


def last_runs(rt: Runtime, limit: int = 5) -> list[DiagnosticRun]:
    with rt.sessions() as session:
        query = select(DiagnosticRun).order_by(DiagnosticRun.id.desc()).limit(limit)
        return list(session.scalars(query))


def last_full_run(rt: Runtime) -> DiagnosticRun | None:
    """The newest run of every check (not a reconcile's record of its repairs)."""
    with rt.sessions() as session:
        query = (
            select(DiagnosticRun)
            .where(DiagnosticRun.checks.is_not(None))
            .order_by(DiagnosticRun.id.desc())
            .limit(1)
        )
        return session.scalars(query).first()
