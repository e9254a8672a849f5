"""The read side: per-gateway status from the poll log, and readings."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from .chains import ChainState
from .colour import Colour, colour_of, state_of
from .models import GatewayRow, PollLog, Reading
from .schedule import dt_to_ms, ms_to_dt
from .settings import Settings
from .shedding import SHED_PREFIX
from .sites import DEFAULT_SITE
from .timefmt import iso_z


@dataclass(frozen=True)
class GatewayStatus:
    name: str
    enabled: bool
    disabled_reason: str | None
    #: yes (live chain) | waiting (live chain, but no worker serves its site) |
    #: overdue (chain stopped advancing) | no
    polling: str
    interval: float
    last_slot: datetime | None
    last_outcome: str | None
    last_error: str | None
    next_due: datetime | None
    ok: int
    failed: int
    skipped: int
    missed: int
    consecutive_failures: int
    #: Of the skipped slots, those shed under overload (polling/shedding.py).
    shed: int = 0
    #: When the newest successful poll (of any kind) finished.
    last_ok_at: datetime | None = None
    #: grey | red | yellow | green (polling/colour.py)
    colour: str = Colour.GREY.value
    #: closed, or open: disabled by its failures (recovery probes it at `next_probe_at`).
    breaker: str = "closed"
    next_probe_at: datetime | None = None
    #: The network it lives on (polling/sites.py).
    site: str = DEFAULT_SITE
    #: Points no device answers (refused alone with exception 2; see polling/learnedplan.py).
    unavailable: tuple[str, ...] = ()

    def as_json(self) -> dict:
        data = asdict(self)
        for key in ("last_slot", "next_due", "last_ok_at", "next_probe_at"):
            data[key] = iso_z(data[key])
        return data

    def offline_s(self, now: datetime) -> float | None:
        """Seconds since the last success, once that is over two intervals (None before,
        or when it never succeeded)."""
        if self.last_ok_at is None:
            return None
        age = (now - self.last_ok_at).total_seconds()
        return age if age > 2 * self.interval else None


def gateway_statuses(
    session: Session,
    chains: dict[int, ChainState],
    overdue: set[int],
    *,
    consumed: bool | Container[str] = True,
    now: datetime | None = None,
    settings: Settings | None = None,
    critical: frozenset[int] | set[int] = frozenset(),
) -> list[GatewayStatus]:
    """Counts come from the poll log (scheduled polls only), one grouped query. Without a
    worker serving its site (`consumed`: the sites served, or whether any worker polls),
    a live chain is only waiting. The
    colour is judged at `now` on the failure rate over the health window; `critical`
    holds the gateways with an open critical alert."""
    settings = settings or Settings()
    now = now or datetime.now(UTC)
    rates = failure_rates(session, now - timedelta(seconds=settings.health_window))
    counts: dict[int, dict[str, int]] = {}
    shed_rows = case((PollLog.error.startswith(SHED_PREFIX, autoescape=True), PollLog.slots))
    grouped = (
        select(PollLog.gateway_id, PollLog.outcome, func.sum(PollLog.slots), func.sum(shed_rows))
        .where(PollLog.kind == "scheduled")
        .group_by(PollLog.gateway_id, PollLog.outcome)
    )
    shed: dict[int, int] = {}
    for gateway_id, outcome, n, n_shed in session.execute(grouped):
        counts.setdefault(gateway_id, {})[outcome] = int(n)
        if outcome == "skipped":
            shed[gateway_id] = int(n_shed or 0)
    latest = _latest_polls(session)
    out = []
    for row in session.scalars(select(GatewayRow).order_by(GatewayRow.name)):
        chain = chains.get(row.id)
        last = latest.get(row.id)
        c = counts.get(row.id, {})
        served = consumed if isinstance(consumed, bool) else row.site in consumed
        polling = _polling(chain is not None, row.id in overdue, served)
        out.append(
            GatewayStatus(
                name=row.name,
                enabled=row.enabled,
                disabled_reason=row.disabled_reason,
                polling=polling,
                interval=row.interval_s,
                last_slot=last.slot_at if last else None,
                last_outcome=last.outcome if last else None,
                last_error=last.error if last else None,
                next_due=ms_to_dt(chain.due_ms) if chain else None,
                ok=c.get("ok", 0),
                failed=c.get("failed", 0),
                skipped=c.get("skipped", 0),
                missed=c.get("missed", 0),
                consecutive_failures=row.consecutive_failures,
                shed=shed.get(row.id, 0),
                last_ok_at=row.last_ok_at,
                colour=colour_of(
                    state_of(row, rates.get(row.id), row.id in critical),
                    now,
                    settings.colour_rules,
                ).value,
                breaker="open" if not row.enabled and row.probe_delay_s is not None else "closed",
                next_probe_at=row.next_probe_at,
                site=row.site,
            )
        )
    return out


def failure_rates(session: Session, since: datetime) -> dict[int, float]:
    """failed / polled per gateway over its scheduled slots since `since` and since it
    last started (a restart or a recovery begins a fresh record: the failures that
    disabled it do not colour it once it polls again). One grouped query."""
    g = GatewayRow.__table__
    query = (
        select(PollLog.gateway_id, func.count(), func.sum(case((PollLog.outcome == "failed", 1))))
        .join(g, g.c.id == PollLog.gateway_id)
        .where(
            PollLog.kind == "scheduled",
            PollLog.slot_at >= since,
            PollLog.outcome.in_(("ok", "failed", "skipped")),
            or_(g.c.polling_since.is_(None), PollLog.slot_at >= g.c.polling_since),
        )
        .group_by(PollLog.gateway_id)
    )
    return {gateway_id: (failed or 0) / n for gateway_id, n, failed in session.execute(query) if n}


def _polling(chain: bool, overdue: bool, consumed: bool) -> str:
    if not chain:
        return "no"
    if not consumed:
        return "waiting"
    return "overdue" if overdue else "yes"


def _latest_polls(session: Session) -> dict[int, PollLog]:
    """Each gateway's newest scheduled poll that ran (missed slots are not polls)."""
    newest = (
        select(PollLog.gateway_id, func.max(PollLog.slot_at).label("slot_at"))
        .where(PollLog.kind == "scheduled", PollLog.outcome != "missed")
        .group_by(PollLog.gateway_id)
        .subquery()
    )
    query = select(PollLog).join(
        newest,
        (PollLog.gateway_id == newest.c.gateway_id) & (PollLog.slot_at == newest.c.slot_at),
    )
    return {
        row.gateway_id: row for row in session.scalars(query.where(PollLog.kind == "scheduled"))
    }


@dataclass(frozen=True)
class ReadingRow:
    gateway: str
    point: str
    slot_at: datetime
    read_at: datetime
    #: As stored: a float, or text for strings and wide integers (see `values.shown`).
    value: float | str | None
    unit: str | None
    kind: str


def readings(
    session: Session,
    gateway: str,
    *,
    point: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[ReadingRow]:
    """Newest first."""
    query = (
        select(Reading, GatewayRow.name)
        .join(GatewayRow, GatewayRow.id == Reading.gateway_id)
        .where(GatewayRow.name == gateway)
    )
    if point is not None:
        query = query.where(Reading.point == point)
    if since is not None:
        query = query.where(Reading.slot_at >= since)
    query = query.order_by(Reading.slot_at.desc(), Reading.point).limit(limit)
    return [
        ReadingRow(
            gateway=name,
            point=r.point,
            slot_at=r.slot_at,
            read_at=r.read_at,
            value=r.text if r.text is not None else r.value,
            unit=r.unit,
            kind=r.kind,
        )
        for r, name in session.execute(query)
    ]


def latest_values(session: Session) -> dict[str, dict[str, object]]:
    """Each gateway's most recent value per point (for the demo's live table)."""
    newest = (
        select(Reading.gateway_id, Reading.point, func.max(Reading.slot_at).label("slot_at"))
        .group_by(Reading.gateway_id, Reading.point)
        .subquery()
    )
    query = (
        select(GatewayRow.name, Reading)
        .join(GatewayRow, GatewayRow.id == Reading.gateway_id)
        .join(
            newest,
            (Reading.gateway_id == newest.c.gateway_id)
            & (Reading.point == newest.c.point)
            & (Reading.slot_at == newest.c.slot_at),
        )
    )
    out: dict[str, dict[str, object]] = {}
    for name, r in session.execute(query):
        out.setdefault(name, {})[r.point] = r.text if r.text is not None else r.value
    return out


@dataclass(frozen=True)
class WindowStats:
    """One gateway's scheduled slots since a time: outcomes and mean poll duration."""

    outcomes: dict[str, int]
    mean_duration_ms: float | None

    @property
    def polled(self) -> int:
        return sum(n for outcome, n in self.outcomes.items() if outcome != "missed")

    @property
    def success_rate(self) -> float | None:
        """ok / polled, rounded for display; None when nothing was polled."""
        polled = self.polled
        return round(self.outcomes.get("ok", 0) / polled, 4) if polled else None


def window_stats(session: Session, since: datetime) -> dict[int, WindowStats]:
    """Per gateway, one grouped query over the recent slots (indexed by slot), and the
    part of each missed range that lies in the window."""
    query = (
        select(PollLog.gateway_id, PollLog.outcome, func.count(), func.avg(PollLog.duration_ms))
        .where(PollLog.kind == "scheduled", PollLog.slot_at >= since, PollLog.slots == 1)
        .group_by(PollLog.gateway_id, PollLog.outcome)
    )
    outcomes: dict[int, dict[str, int]] = {}
    for gateway_id, outcome, n in _ranges_since(session, since):
        counts = outcomes.setdefault(gateway_id, {})
        counts[outcome] = counts.get(outcome, 0) + n
    durations: dict[int, list[tuple[int, float]]] = {}
    for gateway_id, outcome, n, mean in session.execute(query):
        counts = outcomes.setdefault(gateway_id, {})
        counts[outcome] = counts.get(outcome, 0) + n
        if mean is not None:
            durations.setdefault(gateway_id, []).append((n, float(mean)))
    out = {}
    for gateway_id, counts in outcomes.items():
        parts = durations.get(gateway_id, [])
        total = sum(n for n, _ in parts)
        mean = sum(n * m for n, m in parts) / total if total else None
        out[gateway_id] = WindowStats(counts, mean)
    return out


def _ranges_since(session: Session, since: datetime) -> list[tuple[int, str, int]]:
    """(gateway, outcome, slots at or after `since`) of each range row reaching into the
    window: few rows (one per long outage per gateway)."""
    query = select(
        PollLog.gateway_id, PollLog.outcome, PollLog.slot_at, PollLog.last_slot_at, PollLog.slots
    ).where(PollLog.kind == "scheduled", PollLog.slots > 1, PollLog.last_slot_at >= since)
    out = []
    cut = dt_to_ms(since)
    for gateway_id, outcome, first_at, last_at, slots in session.execute(query):
        first, last = dt_to_ms(first_at), dt_to_ms(last_at)
        step = (last - first) // (slots - 1)
        before = max(0, -(-(cut - first) // step))  # slots of the range before the window
        out.append((gateway_id, outcome, slots - before))
    return out
