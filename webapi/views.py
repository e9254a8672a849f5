"""The JSON documents the API serves, built from shared state."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select

from polling import diagnostics, fleetview, heartbeat, queries
from polling.healthview import FleetHealth, fleet_health
from polling.models import DiagnosticRun, GatewayRow, Reading
from polling.queueview import QueueInspector
from polling.runtime import Runtime
from polling.schedule import ms_to_dt
from polling.status import collect_status, live_chains
from polling.timefmt import iso_z
from workers.queues import queue_site


def now_utc(rt: Runtime) -> datetime:
    return ms_to_dt(rt.clock())


def health(rt: Runtime) -> FleetHealth:
    run = diagnostics.last_full_run(rt)
    period = rt.settings.diagnostics_seconds
    if run is None:
        return fleet_health(None, None, now_utc(rt), period)
    return fleet_health(run.checks, run.ran_at, now_utc(rt), period)


def diagnostics_runs(rt: Runtime, limit: int) -> dict:
    """The newest runs, newest first: what each found and repaired."""
    return {"runs": [_run_json(run) for run in diagnostics.last_runs(rt, limit)]}


def _run_json(run: DiagnosticRun) -> dict:
    return {
        "id": run.id,
        "ran_at": iso_z(run.ran_at),
        "health": run.health,
        # A reconcile's record of its repairs has no checks: it ran none.
        "kind": "diagnostics" if run.checks is not None else "reconcile",
        "checks": run.checks,
        "findings": run.findings,
        "repairs": run.repairs,
    }


def queue_status(rt: Runtime, queues: QueueInspector) -> dict:
    """Per queue: depth, how long its oldest message has been due, and consumers; what
    workers hold unacknowledged; live and overdue chains."""
    now = rt.clock()
    workers = heartbeat.live_workers(rt.redis, rt.keys)
    chains, overdue = live_chains(rt)
    unacked = queues.unacked(now)
    return {
        "queues": [
            {
                "name": q.name,
                "waiting": q.waiting,
                "oldest_age_s": q.oldest_age,
                "consumers": consumers(workers, q.name),
            }
            for q in queues.queues(now)
        ],
        "unacked": {"count": unacked.count, "oldest_age_s": unacked.oldest_age},
        "chains": {"live": len(chains), "overdue": len(overdue)},
        "workers": [
            {
                "name": w.name,
                "host": w.host,
                "queues": list(w.queues),
                "polls": w.polls,
                "sites": list(w.sites),
                "clock_skew_ms": w.skew_ms,
            }
            for w in workers
        ],
    }


def consumers(workers: list[heartbeat.ProcessInfo], queue: str) -> int:
    """Live workers consuming `queue` (a worker that paused its polling queues, its clock
    off, not)."""
    if (site := queue_site(queue)) is not None:
        return sum(site in w.sites for w in workers)
    return sum(queue in w.queues for w in workers)


def gateways(rt: Runtime, name: str | None = None) -> list[dict]:
    """Each gateway's status (as `pollctl status --json`: colour, last_ok_at, breaker, next
    probe), with its success rate over the health window and how long it has been offline;
    with `name`, that gateway only."""
    statuses = [s for s in collect_status(rt) if name is None or s.name == name]
    if not statuses:
        return []
    window = rt.settings.health_window
    now = now_utc(rt)
    with rt.sessions() as session:
        ids = dict(session.execute(select(GatewayRow.name, GatewayRow.id)).tuples().all())
        stats = queries.window_stats(session, now - timedelta(seconds=window))
    out = []
    for status in statuses:
        stat = stats.get(ids[status.name])
        data = status.as_json()  # colour, last_ok_at, breaker and next probe included
        offline = status.offline_s(now)
        data["offline_s"] = round(offline, 1) if offline is not None else None
        data["success_rate"] = stat.success_rate if stat else None
        data["window_s"] = window
        out.append(data)
    return out


def tiles(
    rt: Runtime, judged: fleetview.JudgedCache, colour: str, q: str, offset: int, limit: int
) -> dict:
    """A page of the status page's tiles (see polling/fleetview.py); the fleet's colours
    from `judged` while they are fresh."""
    now = now_utc(rt)
    window = rt.settings.health_window
    with rt.sessions() as session:
        fleet = judged.get(
            lambda: fleetview.judge_fleet(session, now, window, rt.settings.colour_rules)
        )
        page = fleetview.tile_page(
            session, fleet, now, colour=colour, name_like=q, offset=offset, limit=limit
        )
    return {**page, "window_s": window}


def gateway_detail(rt: Runtime, name: str) -> dict | None:
    """A gateway's page: points with values, units and sparklines, poll log, missed slots."""
    now = now_utc(rt)
    with rt.sessions() as session:
        judged = fleetview.judge_fleet(
            session, now, rt.settings.health_window, rt.settings.colour_rules, name
        )
        found = next((j for j in judged if j.row.name == name), None)
        return None if found is None else fleetview.gateway_detail(session, found, now)


def latest_readings(rt: Runtime, name: str) -> list[dict]:
    """The gateway's readings of its newest slot that has any."""
    with rt.sessions() as session:
        gateway_id = session.scalar(select(GatewayRow.id).where(GatewayRow.name == name))
        newest = session.scalar(
            select(func.max(Reading.slot_at)).where(Reading.gateway_id == gateway_id)
        )
        if newest is None:
            return []
        rows = session.scalars(
            select(Reading)
            .where(Reading.gateway_id == gateway_id, Reading.slot_at == newest)
            .order_by(Reading.point)
        )
        return [
            {
                "point": r.point,
                "value": r.text if r.text is not None else r.value,
                "unit": r.unit,
                "slot_at": iso_z(r.slot_at),
                "read_at": iso_z(r.read_at),
            }
            for r in rows
        ]
