"""Learnt request plans in the database (table `request_plans`), so every worker polls a
gateway by what any of them learnt: a worker that learns saves the plan and bumps the
configuration stamp, and the others reload the gateway on their next poll (configcache).
A plan learnt while the database is down waits in the record buffer (`to_json`) and is
saved by the flush that writes the records, unless a newer one was saved meanwhile."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

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
    return _from_columns({name: getattr(row, name) for name in COLUMNS})


#: The columns of a plan's row, and the keys of its buffered form.
COLUMNS = ("basis", "spans", "unavailable", "learned_at", "retry_at", "events")


def _columns(plan: LearnedPlan) -> dict[str, Any]:
    """The plan as its row holds it: plain JSON types, except the two datetimes."""
    return {
        "basis": plan.basis,
        "spans": None if plan.spans is None else [list(s) for s in plan.spans],
        "unavailable": list(plan.unavailable),
        "learned_at": plan.learned_at,
        "retry_at": plan.retry_at,
        "events": [[iso_z(at), what] for at, what in plan.events],
    }


def _from_columns(data: dict[str, Any]) -> LearnedPlan:
    spans = data["spans"]
    return LearnedPlan(
        data["basis"],
        None if spans is None else tuple((d, r, a, c) for d, r, a, c in spans),
        tuple(data["unavailable"]),
        data["learned_at"],
        data["retry_at"],
        tuple((_parse(at), what) for at, what in data["events"]),
    )


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def save(
    session: Session, plans: Sequence[tuple[int, LearnedPlan]], *, newer_only: bool = False
) -> None:
    """Insert or replace each gateway's plan (a deleted gateway's is skipped). With
    `newer_only` (a plan buffered during an outage), one whose newest event is not newer
    than the stored plan's is skipped: a worker learnt again, or an operator replanned,
    since."""
    for gateway_id, plan in plans:
        row = session.get(RequestPlanRow, gateway_id)
        if row is None:
            if session.get(GatewayRow, gateway_id) is None:
                continue  # deleted while it was polled
            row = RequestPlanRow(gateway_id=gateway_id)
            session.add(row)
        elif newer_only and not _newer(plan, row):
            continue
        for name, value in _columns(plan).items():
            setattr(row, name, value)


def _newer(plan: LearnedPlan, row: RequestPlanRow) -> bool:
    """Whether the plan's newest event is newer than the row's (to the millisecond, as
    stored)."""
    if not plan.events or not row.events:
        return True
    return _parse(iso_z(plan.events[-1][0]) or "") > _parse(row.events[-1][0])


def to_json(gateway_id: int, plan: LearnedPlan) -> dict[str, Any]:
    """A plan as the record buffer keeps it (`type` plan), with an id that keeps one copy
    of each learning however often it is pushed."""
    columns = _columns(plan)
    at = columns["events"][-1][0] if plan.events else ""
    return {
        "id": f"plan:{gateway_id}:{at}",
        "type": "plan",
        "gateway_id": gateway_id,
        **columns,
        "learned_at": iso_z(plan.learned_at),
        "retry_at": iso_z(plan.retry_at),
    }


def from_json(data: dict[str, Any]) -> tuple[int, LearnedPlan]:
    """A buffered plan (`to_json`) back, with its gateway's id."""
    times = {
        key: None if data[key] is None else _parse(data[key]) for key in ("learned_at", "retry_at")
    }
    return int(data["gateway_id"]), _from_columns({**data, **times})


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
