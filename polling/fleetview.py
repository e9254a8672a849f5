"""What the status page shows: each gateway's colour (`colour.colour_of`, the one
judgement), a page of tiles filtered by colour and name, and one gateway's detail.

Costs are per page, never per gateway: the colours of the whole fleet come from one query
of the gateways table and one grouped query of the recent poll log; a page's tiles then
add one query each for their newest polls, their newest values and their sparklines
(averaged per bucket in the database), restricted to the page's gateways and the last hour.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, ColumnElement, Integer, cast, func, select, tuple_
from sqlalchemy.orm import Session, load_only

from . import queries
from .colour import Colour, ColourRules, colour_of, state_of
from .models import GatewayRow, PointRow, PollLog, Reading
from .schedule import dt_to_ms
from .timefmt import iso_z

#: What tiles and sparklines look back over.
HOUR = timedelta(hours=1)
#: Points of a tile's sparkline, and of each point's on a gateway's page.
TILE_BUCKETS = 30
DETAIL_BUCKETS = 60
#: Newest poll-log rows on a gateway's page.
POLL_LOG_ROWS = 50
_ROW_COLUMNS = (
    GatewayRow.id,
    GatewayRow.name,
    GatewayRow.enabled,
    GatewayRow.polling,
    GatewayRow.disabled_reason,
    GatewayRow.interval_s,
    GatewayRow.last_ok_at,
    GatewayRow.polling_since,
    GatewayRow.probe_delay_s,
    GatewayRow.next_probe_at,
)


@dataclass(frozen=True)
class Judged:
    """A gateway's row with its colour and recent success rate."""

    row: GatewayRow
    colour: Colour
    success_rate: float | None


def judge_fleet(
    session: Session, now: datetime, window_s: float, rules: ColourRules, name_like: str = ""
) -> list[Judged]:
    """Every gateway (whose name contains `name_like`), by name, with its colour: two
    queries whatever the fleet's size."""
    query = select(GatewayRow).options(load_only(*_ROW_COLUMNS)).order_by(GatewayRow.name)
    if name_like:
        query = query.where(GatewayRow.name.contains(name_like, autoescape=True))
    rows = list(session.scalars(query))
    stats = queries.window_stats(session, now - timedelta(seconds=window_s))
    out = []
    for row in rows:
        stat = stats.get(row.id)
        polled = stat.polled if stat else 0
        failed = stat.outcomes.get("failed", 0) if stat else 0
        ok = stat.outcomes.get("ok", 0) if stat else 0
        rate = failed / polled if polled else None
        # TODO(alerts): critical_alert from polling.alerts.open_critical_gateways(session).
        colour = colour_of(state_of(row, rate, critical_alert=False), now, rules)
        out.append(Judged(row, colour, round(ok / polled, 4) if polled else None))
    return out


def tile_page(
    session: Session,
    now: datetime,
    window_s: float,
    rules: ColourRules,
    *,
    colour: str = "",
    name_like: str = "",
    offset: int = 0,
    limit: int = 100,
) -> dict:
    """One page of tiles, by name, and how many gateways there are of each colour (of
    those whose name matches)."""
    judged = judge_fleet(session, now, window_s, rules, name_like)
    counts = {c.value: 0 for c in Colour}
    for j in judged:
        counts[j.colour.value] += 1
    chosen = [j for j in judged if not colour or j.colour.value == colour]
    page = chosen[offset : offset + limit]
    ids = [j.row.id for j in page]
    since = now - HOUR
    last = _newest_polls(session, ids, since)
    values = newest_values(session, ids, since)
    firsts = _first_numeric_points(session, ids)
    series = sparklines(session, list(firsts.items()), since, now, TILE_BUCKETS)
    tiles = []
    for j in page:
        tile = judged_json(j)
        poll = last.get(j.row.id)
        tile["last_slot"] = iso_z(poll.slot_at) if poll else None
        tile["last_outcome"] = poll.outcome if poll else None
        tile["last_error"] = poll.error if poll else None
        tile["values"] = values.get(j.row.id, [])
        point = firsts.get(j.row.id)
        spark = series.get((j.row.id, point), []) if point is not None else []
        tile["spark"] = {"point": point, "series": spark}
        tiles.append(tile)
    return {
        "gateways": tiles,
        "total": len(chosen),
        "offset": offset,
        "limit": limit,
        "counts": counts,
        "window_s": window_s,
    }


def judged_json(j: Judged) -> dict:
    row = j.row
    return {
        "name": row.name,
        "colour": j.colour.value,
        "enabled": row.enabled,
        "started": row.polling,
        "disabled_reason": row.disabled_reason,
        "interval": row.interval_s,
        "last_ok_at": iso_z(row.last_ok_at),
        "next_probe_at": iso_z(row.next_probe_at),
        "success_rate": j.success_rate,
    }


def gateway_detail(session: Session, judged: Judged, now: datetime) -> dict:
    """A gateway's page: its points with their newest values and units and a sparkline
    each, its recent poll log (outcome, duration, lateness, error), and its missed slots
    of the last hour."""
    row = judged.row
    since = now - HOUR
    points = list(
        session.execute(
            select(PointRow.name, PointRow.unit, PointRow.type, PointRow.register)
            .where(PointRow.gateway_id == row.id)
            .order_by(PointRow.id)
        )
    )
    newest = {v["point"]: v for v in newest_values(session, [row.id], since).get(row.id, [])}
    numeric = [(row.id, p.name) for p in points if p.type != "string"]
    series = sparklines(session, numeric, since, now, DETAIL_BUCKETS)
    log_rows = session.scalars(
        select(PollLog)
        .where(PollLog.gateway_id == row.id)
        .order_by(PollLog.slot_at.desc())
        .limit(POLL_LOG_ROWS)
    )
    missed = session.execute(
        select(PollLog.slot_at, PollLog.last_slot_at, PollLog.slots, PollLog.error)
        .where(
            PollLog.gateway_id == row.id,
            PollLog.outcome == "missed",
            func.coalesce(PollLog.last_slot_at, PollLog.slot_at) >= since,
        )
        .order_by(PollLog.slot_at.desc())
    )
    return {
        **judged_json(judged),
        "points": [
            {
                "name": p.name,
                "unit": p.unit,
                "type": p.type,
                "register": p.register,
                "value": newest.get(p.name, {}).get("value"),
                "slot_at": newest.get(p.name, {}).get("slot_at"),
                "series": series.get((row.id, p.name), []),
            }
            for p in points
        ],
        "polls": [_poll_json(r) for r in log_rows],
        "missed": [
            {
                "slot_at": iso_z(first),
                "last_slot_at": iso_z(last or first),
                "slots": slots,
                "why": why,
            }
            for first, last, slots, why in missed
        ],
    }


def _poll_json(r: PollLog) -> dict:
    lateness = dt_to_ms(r.started_at) - dt_to_ms(r.slot_at) if r.started_at else None
    return {
        "slot_at": iso_z(r.slot_at),
        "kind": r.kind,
        "outcome": r.outcome,
        "slots": r.slots,
        "duration_ms": None if r.duration_ms is None else round(r.duration_ms, 1),
        "lateness_ms": lateness,
        "error": r.error,
    }


def _newest_polls(session: Session, ids: Collection[int], since: datetime) -> dict[int, PollLog]:
    """Each gateway's newest scheduled poll that ran, within the hour."""
    if not ids:
        return {}
    newest = (
        select(PollLog.gateway_id, func.max(PollLog.slot_at).label("slot_at"))
        .where(
            PollLog.gateway_id.in_(ids),
            PollLog.slot_at >= since,
            PollLog.kind == "scheduled",
            PollLog.outcome != "missed",
        )
        .group_by(PollLog.gateway_id)
        .subquery()
    )
    query = select(PollLog).join(
        newest,
        (PollLog.gateway_id == newest.c.gateway_id) & (PollLog.slot_at == newest.c.slot_at),
    )
    return {r.gateway_id: r for r in session.scalars(query.where(PollLog.kind == "scheduled"))}


def newest_values(session: Session, ids: Collection[int], since: datetime) -> dict[int, list]:
    """Each gateway's newest value per point within the hour, with its unit, by point."""
    if not ids:
        return {}
    newest = (
        select(Reading.gateway_id, Reading.point, func.max(Reading.slot_at).label("slot_at"))
        .where(Reading.gateway_id.in_(ids), Reading.slot_at >= since)
        .group_by(Reading.gateway_id, Reading.point)
        .subquery()
    )
    query = (
        select(Reading)
        .join(
            newest,
            (Reading.gateway_id == newest.c.gateway_id)
            & (Reading.point == newest.c.point)
            & (Reading.slot_at == newest.c.slot_at),
        )
        .order_by(Reading.gateway_id, Reading.point)
    )
    out: dict[int, list] = {}
    for r in session.scalars(query):
        out.setdefault(r.gateway_id, []).append(
            {
                "point": r.point,
                "value": r.text if r.text is not None else r.value,
                "unit": r.unit,
                "slot_at": iso_z(r.slot_at),
            }
        )
    return out


def _first_numeric_points(session: Session, ids: Collection[int]) -> dict[int, str]:
    """The point a tile's sparkline shows: its gateway's first point that is a number."""
    if not ids:
        return {}
    first = (
        select(func.min(PointRow.id))
        .where(PointRow.gateway_id.in_(ids), PointRow.type != "string")
        .group_by(PointRow.gateway_id)
    )
    query = select(PointRow.gateway_id, PointRow.name).where(PointRow.id.in_(first))
    return {gateway_id: name for gateway_id, name in session.execute(query)}


def sparklines(
    session: Session,
    pairs: Iterable[tuple[int, str]],
    since: datetime,
    now: datetime,
    buckets: int,
) -> dict[tuple[int, str], list[list[float]]]:
    """(gateway id, point) -> [[bucket start ms, mean value], ...] over `since`..`now` in
    `buckets` equal buckets, averaged by the database (at most `buckets` rows a point)."""
    pairs = list(pairs)
    if not pairs:
        return {}
    start_s = int(since.timestamp())
    width_s = max(1, int((now - since).total_seconds()) // buckets)
    bucket = (_epoch_s(session) - start_s) // width_s
    query = (
        select(Reading.gateway_id, Reading.point, bucket.label("b"), func.avg(Reading.value))
        .where(
            tuple_(Reading.gateway_id, Reading.point).in_(pairs),
            Reading.slot_at >= since,
            Reading.value.is_not(None),
        )
        .group_by(Reading.gateway_id, Reading.point, bucket)
        .order_by(Reading.gateway_id, Reading.point, bucket)
    )
    out: dict[tuple[int, str], list[list[float]]] = {}
    for gateway_id, point, b, mean in session.execute(query):
        at_ms = (start_s + int(b) * width_s) * 1000
        out.setdefault((gateway_id, point), []).append([at_ms, round(float(mean), 6)])
    return out


def _epoch_s(session: Session) -> ColumnElement[int]:
    """A reading's slot in whole seconds since the epoch, in the database's own SQL."""
    if session.get_bind().dialect.name == "sqlite":
        # SQLite keeps naive UTC text (see models.UTCDateTime).
        return cast(func.strftime("%s", Reading.slot_at), Integer)
    return cast(func.floor(func.extract("epoch", Reading.slot_at)), BigInteger)
