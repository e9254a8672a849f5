"""The state the rules judge, read from what already exists: gateway rows, the newest
readings of points that have data rules, and a diagnostics run's check results."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..checks.base import CheckResult
from ..models import GatewayRow, PointRow, Reading
from .rules import FleetState, GatewayFacts, PointFacts

#: Gateway ids per readings query.
CHUNK = 1000


def fleet_state(session: Session, now: datetime, results: Sequence[CheckResult]) -> FleetState:
    return FleetState(
        now=now,
        gateways=gateway_facts(session),
        points=point_facts(session, now),
        checks={r.component: r for r in results},
    )


def gateway_facts(session: Session) -> list[GatewayFacts]:
    g = GatewayRow
    rows = session.execute(
        select(
            g.id, g.name, g.enabled, g.polling, g.disabled_reason, g.probe_delay_s,
            g.interval_s, g.last_ok_at, g.polling_since,
        ).order_by(g.name)
    )  # fmt: skip
    return [
        GatewayFacts(
            id=row.id,
            name=row.name,
            enabled=row.enabled,
            polling=row.polling,
            # The failure threshold leaves a reason (and recovery a probe delay); the
            # operator's `enabled: false` leaves neither.
            disabled_by_failures=not row.enabled
            and (row.disabled_reason is not None or row.probe_delay_s is not None),
            disabled_reason=row.disabled_reason,
            interval_s=row.interval_s,
            last_ok_at=row.last_ok_at,
            polling_since=row.polling_since,
        )
        for row in rows
    ]


def point_facts(session: Session, now: datetime) -> list[PointFacts]:
    """Points with a data rule of the gateways that poll, each with as many of its newest
    scheduled readings as its rules need (one for min/max, `flatline` for the flat-line
    rule)."""
    p, g = PointRow, GatewayRow
    rows = session.execute(
        select(p.gateway_id, g.name, g.interval_s, p.name, p.unit, p.min, p.max, p.flatline)
        .join(g, p.gateway_id == g.id)
        .where((p.min.is_not(None)) | (p.max.is_not(None)) | (p.flatline.is_not(None)))
        # A stopped or disabled gateway's readings are old news: its data is not judged.
        .where(g.enabled, g.polling)
        .order_by(g.name, p.id)
    ).all()
    if not rows:
        return []
    depth = max(row.flatline or 1 for row in rows)
    # Readings older than a few rounds of the slowest such gateway cannot be among the
    # newest `depth` of a point that is polled; a point long unpolled is judged on none.
    since = now - timedelta(seconds=max((depth + 2) * row.interval_s for row in rows) * 2)
    recent = _recent_values(session, sorted({row.gateway_id for row in rows}), depth, since)
    return [
        PointFacts(
            gateway_id=row.gateway_id,
            gateway=row[1],
            point=row[3],
            min=row.min,
            max=row.max,
            flatline=row.flatline,
            recent=tuple(recent.get((row.gateway_id, row[3]), ())[: row.flatline or 1]),
            unit=row.unit,
        )
        for row in rows
    ]


def _recent_values(
    session: Session, gateway_ids: list[int], depth: int, since: datetime
) -> dict[tuple[int, str], list[float | str | None]]:
    """(gateway id, point) -> its newest `depth` values since `since`, newest first."""
    out: dict[tuple[int, str], list[float | str | None]] = defaultdict(list)
    for first in range(0, len(gateway_ids), CHUNK):
        rank = (
            func.row_number()
            .over(partition_by=(Reading.gateway_id, Reading.point), order_by=Reading.slot_at.desc())
            .label("rank")
        )
        ranked = (
            select(Reading.gateway_id, Reading.point, Reading.value, Reading.text, rank)
            .where(
                Reading.gateway_id.in_(gateway_ids[first : first + CHUNK]),
                Reading.kind == "scheduled",
                Reading.slot_at >= since,
            )
            .subquery()
        )
        query = (
            select(ranked.c.gateway_id, ranked.c.point, ranked.c.value, ranked.c.text)
            .where(ranked.c.rank <= depth)
            .order_by(ranked.c.gateway_id, ranked.c.point, ranked.c.rank)
        )
        for gateway_id, point, value, text in session.execute(query):
            out[(gateway_id, point)].append(text if text is not None else value)
    return out
