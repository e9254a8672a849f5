"""Learnt request plans in the database (table `request_plans`), so every worker polls a
gateway by what any of them learnt: a worker that learns saves the plan and bumps the
configuration stamp, and the others reload the gateway on their next poll (configcache)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from .learnedplan import LearnedPlan, reset
from .models import GatewayRow, RequestPlanRow
from .plan import PollTarget
from .repository import StoredGateway
from .settings import Settings
from .timefmt import iso_z


def load(session: Session, gateway_ids: Iterable[int] | None = None) -> dict[int, LearnedPlan]:
    """The learnt plans of these gateways (all when None), by gateway id: few rows, as only
    gateways that refused a read have one."""
    query = select(RequestPlanRow)
    if gateway_ids is not None:
        query = query.where(RequestPlanRow.gateway_id.in_(list(gateway_ids)))
    return {row.gateway_id: _plan(row) for row in session.scalars(query)}


def targets(
    session: Session, stored: Sequence[StoredGateway], settings: Settings
) -> list[PollTarget]:
    """The gateways planned, each by its learnt plan if it has one (one more query)."""
    plans = load(session, [g.id for g in stored]) if len(stored) < 1000 else load(session)
    return [PollTarget.of(g, settings, plans.get(g.id)) for g in stored]


def _plan(row: RequestPlanRow) -> LearnedPlan:
    spans = None if row.spans is None else tuple((d, r, a, c) for d, r, a, c in row.spans)
    return LearnedPlan(
        row.basis,
        spans,
        tuple(row.unavailable),
        row.learned_at,
        row.retry_at,
        tuple((datetime.fromisoformat(at.replace("Z", "+00:00")), what) for at, what in row.events),
    )


def save(session: Session, plans: Sequence[tuple[int, LearnedPlan]]) -> None:
    """Insert or replace each gateway's plan (a deleted gateway's is skipped)."""
    for gateway_id, plan in plans:
        row = session.get(RequestPlanRow, gateway_id)
        if row is None:
            if session.get(GatewayRow, gateway_id) is None:
                continue  # deleted while it was polled
            row = RequestPlanRow(gateway_id=gateway_id)
            session.add(row)
        row.basis = plan.basis
        row.spans = None if plan.spans is None else [list(s) for s in plan.spans]
        row.unavailable = list(plan.unavailable)
        row.learned_at = plan.learned_at
        row.retry_at = plan.retry_at
        row.events = [[iso_z(at), what] for at, what in plan.events]


def reset_plans(session: Session, gateway_ids: Sequence[int], now: datetime, why: str) -> int:
    """The full plan again for these gateways' learnt plans, history kept; how many."""
    plans = load(session, gateway_ids)
    changed = [(i, reset(p, now, why)) for i, p in plans.items() if p.spans is not None]
    save(session, changed)
    return len(changed)


def retry_due(session: Session, now: datetime) -> int:
    """The daily retry: every learnt plan past its `retry_at` goes back to the full plan.
    Returns how many did (the caller bumps the configuration stamp when any did)."""
    due = session.scalars(
        select(RequestPlanRow.gateway_id).where(RequestPlanRow.retry_at <= now)
    ).all()
    return reset_plans(session, list(due), now, "daily retry") if due else 0
