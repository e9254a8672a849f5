"""From the rows a setup wrote during the measured window to the figures of the report."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from polling.gateways import Gateway
from polling.models import PollLog, Reading
from polling.schedule import Grid, dt_to_ms
from polling.shedding import is_shed


@dataclass
class Figures:
    setup: str
    gateways: int
    interval: float
    seconds: float
    offered: float
    achieved: float
    failed: int
    missed: int
    duplicates: int
    lateness_ms: dict[str, float]
    rows_per_s: float
    device_latency_ms: float = 0.0
    cpu_per_1000: dict[str, float] = field(default_factory=dict)
    cpu_total_per_1000: float = 0.0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    samples_ms: list[float] = field(default_factory=list)
    #: The start: lateness of each gateway's first slot (polled), its first slots missed,
    #: and the seconds from the first gateway's first slot to the last one's.
    first_round_ms: dict[str, float] = field(default_factory=dict)
    first_round_missed: int = 0
    first_round_s: float = 0.0
    #: Slots shed under overload (skipped, not polled: polling/shedding.py) and their share
    #: of the window's slots.
    shed: int = 0
    shed_share: float = 0.0
    #: Evenness of the shortfall (shed and missed slots) over gateways: the worst gateway's
    #: count over the mean (1 is perfectly even; 0 when nothing fell short), and how many
    #: gateways had no poll made in the window at all.
    worst_over_mean: float = 0.0
    starved: int = 0
    #: The overload run's setting: the capacity measured first, and the share of it offered.
    capacity: float = 0.0


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "max": ordered[-1]}


def _rows(session: Session, kind: str, start: datetime, end: datetime) -> list[PollLog]:
    query = select(PollLog).where(
        PollLog.kind == kind, PollLog.slot_at >= start, PollLog.slot_at < end
    )
    return list(session.scalars(query))


def _readings(session: Session, kind: str, start: datetime, end: datetime) -> int:
    query = select(func.count()).where(
        Reading.kind == kind, Reading.slot_at >= start, Reading.slot_at < end
    )
    return int(session.scalar(query.select_from(Reading)) or 0)


def slotted(
    setup: str,
    kind: str,
    session: Session,
    gateways: dict[int, Gateway],
    start: datetime,
    end: datetime,
) -> Figures:
    """pollctl and the floor: one row per slot of the grid; every slot in the window should
    have one, and lateness is the poll's start minus its slot's start."""
    rows = _rows(session, kind, start, end)
    by_gateway: dict[int, list[PollLog]] = defaultdict(list)
    for row in rows:
        by_gateway[row.gateway_id].append(row)
    start_ms, end_ms = dt_to_ms(start), dt_to_ms(end)
    missed = duplicates = 0
    late: list[float] = []
    for gateway_id, gateway in gateways.items():
        grid = Grid.for_gateway(gateway.name, gateway.interval)
        first = grid.containing(start_ms)
        first = first if first >= start_ms else first + grid.interval_ms
        slots = set(range(first, end_ms, grid.interval_ms))
        got = [dt_to_ms(r.slot_at) for r in by_gateway.get(gateway_id, [])]
        duplicates += len(got) - len(set(got))
        missed += len(slots - set(got))
    for row in rows:
        if row.outcome == "missed":
            missed += 1
        elif row.started_at is not None:
            late.append((row.started_at - row.slot_at).total_seconds() * 1000)
    return _figures(setup, kind, session, gateways, start, end, late, rows, missed, duplicates)


def unslotted(
    setup: str,
    kind: str,
    session: Session,
    gateways: dict[int, Gateway],
    start: datetime,
    end: datetime,
    anchors: dict[int, datetime],
) -> Figures:
    """The naive setup knows no slots: each gateway's ideal times are its first poll of the
    run plus whole intervals; a poll counts for the nearest one. Two in one are duplicates,
    none is a miss, and lateness is the distance from it (beat's drift shows here)."""
    rows = _rows(session, kind, start, end)
    seen: dict[tuple[int, int], int] = defaultdict(int)
    late: list[float] = []
    for row in rows:
        if row.started_at is None:  # a row without a start is no poll
            continue
        interval_ms = round(gateways[row.gateway_id].interval * 1000)
        offset = dt_to_ms(row.started_at) - dt_to_ms(anchors[row.gateway_id])
        k = round(offset / interval_ms)
        seen[(row.gateway_id, k)] += 1
        late.append(offset - k * interval_ms)
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    expected = round(len(gateways) * (end - start).total_seconds() / _interval(gateways))
    missed = max(0, expected - len(seen))
    return _figures(setup, kind, session, gateways, start, end, late, rows, missed, duplicates)


def _interval(gateways: dict[int, Gateway]) -> float:
    return next(iter(gateways.values())).interval


def _figures(
    setup: str,
    kind: str,
    session: Session,
    gateways: dict[int, Gateway],
    start: datetime,
    end: datetime,
    late: list[float],
    rows: list[PollLog],
    missed: int,
    duplicates: int,
) -> Figures:
    seconds = (end - start).total_seconds()
    # Polls made: a skipped slot (shed, or its endpoint busy) was not polled.
    polled = [r for r in rows if r.outcome in ("ok", "failed")]
    interval = _interval(gateways)
    readings = _readings(session, kind, start, end)
    figures = Figures(
        setup=setup,
        gateways=len(gateways),
        interval=interval,
        seconds=seconds,
        offered=len(gateways) / interval,
        achieved=len(polled) / seconds,
        failed=sum(r.outcome != "ok" for r in polled),
        missed=missed,
        duplicates=duplicates,
        lateness_ms=percentiles(late),
        rows_per_s=(len(rows) + readings) / seconds,
        samples_ms=late,
    )
    shortfall(figures, gateways, rows)
    return figures


def shortfall(figures: Figures, gateways: dict[int, Gateway], rows: list[PollLog]) -> None:
    """Shed slots, and how evenly the slots not polled (shed, skipped or missed) fell on
    the gateways."""
    short: dict[int, int] = dict.fromkeys(gateways, 0)
    made: dict[int, int] = dict.fromkeys(gateways, 0)
    for r in rows:
        if r.outcome in ("ok", "failed"):
            made[r.gateway_id] = made.get(r.gateway_id, 0) + 1
        else:
            short[r.gateway_id] = short.get(r.gateway_id, 0) + r.slots
        if r.outcome == "skipped" and is_shed(r.error):
            figures.shed += 1
    figures.shed_share = figures.shed / len(rows) if rows else 0.0
    mean = sum(short.values()) / len(short) if short else 0.0
    figures.worst_over_mean = round(max(short.values()) / mean, 2) if mean else 0.0
    figures.starved = sum(n == 0 for n in made.values())


def first_round(figures: Figures, session: Session, kind: str) -> None:
    """The start's figures: each gateway's first recorded slot, how late it was polled."""
    first = (
        select(PollLog.gateway_id, func.min(PollLog.slot_at).label("slot_at"))
        .where(PollLog.kind == kind)
        .group_by(PollLog.gateway_id)
        .subquery()
    )
    query = select(PollLog.outcome, PollLog.slot_at, PollLog.started_at).join(
        first,
        (PollLog.gateway_id == first.c.gateway_id) & (PollLog.slot_at == first.c.slot_at),
    )
    rows = session.execute(query.where(PollLog.kind == kind)).all()
    late = [
        (started - slot).total_seconds() * 1000
        for outcome, slot, started in rows
        if outcome != "missed" and started is not None
    ]
    figures.first_round_ms = percentiles(late)
    figures.first_round_missed = sum(outcome == "missed" for outcome, _, _ in rows)
    slots = [slot for _, slot, _ in rows]
    figures.first_round_s = (max(slots) - min(slots)).total_seconds() if slots else 0.0


def first_polls(session: Session, kind: str) -> dict[int, datetime]:
    query = (
        select(PollLog.gateway_id, func.min(PollLog.started_at))
        .where(PollLog.kind == kind)
        .group_by(PollLog.gateway_id)
    )
    return dict(session.execute(query).all())  # type: ignore[arg-type]
