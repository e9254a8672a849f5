"""What the status page shows: each gateway's colour (`colour.colour_of`, the one
judgement), a page of tiles filtered by colour and name, and one gateway's detail.

Costs are per page, never per gateway: the colours of the whole fleet come from one query
of the gateways table and one grouped query of the recent poll log (kept for a couple of
seconds by `JudgedCache`, so any number of browsers cost one such pair of queries per
period); a page's tiles then add a few queries restricted to the page's gateways and the
last hour: their points, their newest polls, their newest values (looked up by key) and
their sparklines (averaged per bucket in the database).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, ColumnElement, Integer, cast, func, select, tuple_
from sqlalchemy.orm import Session, load_only

from .alerts.store import open_critical_gateways
from .colour import Colour, ColourRules, colour_of, state_of
from .models import GatewayRow, PointRow, PollLog, Reading
from .queries import failure_rates, window_stats
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
    GatewayRow.site,
)


@dataclass(frozen=True)
class Judged:
    """A gateway's row with its colour and recent success rate."""

    row: GatewayRow
    colour: Colour
    success_rate: float | None


@dataclass
class JudgedCache:
    """The fleet's judgement, reused for `ttl_s`, or for `COST_FACTOR` times what the last
    judgement took if longer: a page polled by many browsers, and refreshed after every
    batch, reads the fleet once per period, and judging a large fleet (0.4 s at 10,000
    gateways) takes at most a fifth of a core. One computation at a time (the API's
    handlers run on a thread pool)."""

    COST_FACTOR = 5.0
    ttl_s: float = 1.0
    monotonic: Callable[[], float] = time.monotonic
    _held: tuple[float, list[Judged]] | None = None
    _until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def get(self, compute: Callable[[], list[Judged]]) -> list[Judged]:
        with self._lock:
            began = self.monotonic()
            if self._held is None or began >= self._until:
                self._held = (began, compute())
                took = self.monotonic() - began
                self._until = began + max(self.ttl_s, self.COST_FACTOR * took)
            return self._held[1]


def judge_fleet(
    session: Session, now: datetime, window_s: float, rules: ColourRules, name_like: str = ""
) -> list[Judged]:
    """Every gateway (whose name contains `name_like`), by name, with its colour: two
    queries whatever the fleet's size."""
    query = select(GatewayRow).options(load_only(*_ROW_COLUMNS)).order_by(GatewayRow.name)
    if name_like:
        query = query.where(GatewayRow.name.contains(name_like, autoescape=True))
    rows = list(session.scalars(query))
    since = now - timedelta(seconds=window_s)
    stats = window_stats(session, since)
    # The colour's inputs are `pollctl status`'s, so the page and the CLI agree.
    rates = failure_rates(session, since)
    critical = open_critical_gateways(session)
    out = []
    for row in rows:
        stat = stats.get(row.id)
        state = state_of(row, rates.get(row.id), critical_alert=row.id in critical)
        colour = colour_of(state, now, rules)
        out.append(Judged(row, colour, stat.success_rate if stat else None))
    return out


def tile_page(
    session: Session,
    fleet: Sequence[Judged],
    now: datetime,
    *,
    colour: str = "",
    name_like: str = "",
    offset: int = 0,
    limit: int = 100,
) -> dict:
    """One page of `fleet`'s tiles (by name, names containing `name_like` in any case),
    and how many of those gateways there are of each colour."""
    needle = name_like.casefold()
    judged = [j for j in fleet if needle in j.row.name.casefold()]
    counts = {c.value: 0 for c in Colour}
    for j in judged:
        counts[j.colour.value] += 1
    chosen = [j for j in judged if not colour or j.colour.value == colour]
    page = chosen[offset : offset + limit]
    ids = [j.row.id for j in page]
    since = now - HOUR
    points = _points(session, ids)
    last = _newest_polls(session, ids, since)
    values = newest_values(session, points, _newest_polls(session, ids, since, ok_only=True))
    firsts = {g: next((n for n, t in ps if t != "string"), None) for g, ps in points.items()}
    numeric = [(g, n) for g, n in firsts.items() if n is not None]
    series = sparklines(session, numeric, since, now, TILE_BUCKETS)
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
    }


def judged_json(j: Judged) -> dict:
    row = j.row
    return {
        "name": row.name,
        "site": row.site,
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
    ok = _newest_polls(session, [row.id], since, ok_only=True)
    listed = {row.id: [(p.name, p.type) for p in points]}
    newest = {v["point"]: v for v in newest_values(session, listed, ok).get(row.id, [])}
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
        "missed_slots": [
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


def _points(session: Session, ids: Collection[int]) -> dict[int, list[tuple[str, str]]]:
    """Each gateway's points as (name, type), in the order of its file."""
    out: dict[int, list[tuple[str, str]]] = {}
    if not ids:
        return out
    query = (
        select(PointRow.gateway_id, PointRow.name, PointRow.type)
        .where(PointRow.gateway_id.in_(ids))
        .order_by(PointRow.id)
    )
    for gateway_id, name, kind in session.execute(query):
        out.setdefault(gateway_id, []).append((name, kind))
    return out


def _newest_polls(
    session: Session, ids: Collection[int], since: datetime, *, ok_only: bool = False
) -> dict[int, PollLog]:
    """Each gateway's newest scheduled poll that ran (or that succeeded), within the hour:
    a range of the (gateway, slot) index per gateway."""
    if not ids:
        return {}
    ran = PollLog.outcome == "ok" if ok_only else PollLog.outcome != "missed"
    newest = (
        select(PollLog.gateway_id, func.max(PollLog.slot_at).label("slot_at"))
        .where(
            PollLog.gateway_id.in_(ids),
            PollLog.slot_at >= since,
            PollLog.kind == "scheduled",
            ran,
        )
        .group_by(PollLog.gateway_id)
        .subquery()
    )
    query = select(PollLog).join(
        newest,
        (PollLog.gateway_id == newest.c.gateway_id) & (PollLog.slot_at == newest.c.slot_at),
    )
    return {r.gateway_id: r for r in session.scalars(query.where(PollLog.kind == "scheduled"))}


def newest_values(
    session: Session, points: dict[int, list[tuple[str, str]]], ok: dict[int, PollLog]
) -> dict[int, list]:
    """Each gateway's values of its newest ok poll (`ok`), with their units, by point:
    looked up by the readings' key (gateway, point, slot), never scanned."""
    keys = [
        (gateway_id, name, ok[gateway_id].slot_at)
        for gateway_id, listed in points.items()
        if gateway_id in ok
        for name, _ in listed
    ]
    if not keys:
        return {}
    query = (
        select(Reading)
        .where(
            tuple_(Reading.gateway_id, Reading.point, Reading.slot_at).in_(keys),
            Reading.kind == "scheduled",
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
