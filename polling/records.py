"""The poll record: one poll-log row per slot and one reading per point, and how a batch
of them is written in one transaction (where they go when that fails: `saving`).

An entry is a poll (its row and readings) or a run of slots that passed without a poll;
the buffer keeps entries as plain JSON (`to_json` / `from_json`), so one function writes
them now or later.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, ScalarSelect, bindparam, func, or_, select, tuple_, update
from sqlalchemy.orm import Session

from . import pgwrite
from .db import insert_ignoring_conflicts, inserted
from .gateways import Point
from .models import GatewayRow, PollLog, Reading
from .outcome import Outcome, PollKind
from .schedule import dt_to_ms, ms_to_dt

log = logging.getLogger(__name__)

#: Integers beyond this lose precision as floats: they are kept as text too.
EXACT_FLOAT_LIMIT = 2**53


@dataclass(frozen=True)
class PollRecord:
    gateway_id: int
    slot_ms: int
    kind: PollKind
    outcome: Outcome
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class PollEntry:
    """A poll's row and its readings (rows of `reading_row`)."""

    record: PollRecord
    readings: Sequence[dict]


#: A run of missed slots longer than this is written as one range row (first slot, last
#: slot, count) instead of a row per slot: an outage of hours costs a row per gateway.
RANGE_FROM = 100


@dataclass(frozen=True)
class MissedRun:
    """Consecutive slots of one gateway (`count` of them from `first_ms`, `interval_ms`
    apart) that passed without a poll, and why."""

    gateway_id: int
    first_ms: int
    count: int
    interval_ms: int
    why: str

    @classmethod
    def one(cls, gateway_id: int, slot_ms: int, interval_ms: int, why: str) -> MissedRun:
        return cls(gateway_id, slot_ms, 1, interval_ms, why)

    @property
    def last_ms(self) -> int:
        return self.first_ms + (self.count - 1) * self.interval_ms

    def slots(self) -> range:
        return range(self.first_ms, self.last_ms + 1, self.interval_ms)


Entry = PollEntry | MissedRun


def reading_row(
    gateway_id: int, point: Point, value: object, slot_ms: int, kind: str, read_at: datetime
) -> dict:
    number: float | None = None
    text: str | None = None
    if isinstance(value, str):
        text = value
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > EXACT_FLOAT_LIMIT:
        number, text = float(value), str(value)
    else:
        number = float(value)  # type: ignore[arg-type]
    return {
        "gateway_id": gateway_id,
        "point": point.name,
        "slot_at": ms_to_dt(slot_ms),
        "kind": str(kind),
        "read_at": read_at,
        "value": number,
        "text": text,
        "unit": point.unit,
    }


def poll_row(record: PollRecord) -> dict:
    duration = None
    if record.started_at and record.finished_at:
        duration = (record.finished_at - record.started_at).total_seconds() * 1000
    return {
        "gateway_id": record.gateway_id,
        "slot_at": ms_to_dt(record.slot_ms),
        "kind": str(record.kind),
        "outcome": str(record.outcome),
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "duration_ms": duration,
        "error": record.error,
    }


# -- the buffer's plain form -----------------------------------------------------------------


def entry_id(entry: Entry) -> str:
    """What the entry records, as a key: the same record pushed twice is kept once."""
    if isinstance(entry, MissedRun):
        return f"missed:{entry.gateway_id}:{entry.first_ms}:{entry.last_ms}:{entry.count}"
    r = entry.record
    return f"poll:{r.gateway_id}:{r.kind}:{r.slot_ms}"


def to_json(entry: Entry) -> dict:
    """The entry in plain JSON types (datetimes as ISO text) with its id, as the buffer
    keeps it."""
    if isinstance(entry, MissedRun):
        return {
            "id": entry_id(entry),
            "type": "missed",
            "gateway_id": entry.gateway_id,
            "first": entry.first_ms,
            "count": entry.count,
            "interval": entry.interval_ms,
            "why": entry.why,
        }
    r = entry.record
    return {
        "id": entry_id(entry),
        "type": "poll",
        "record": {
            "gateway_id": r.gateway_id,
            "slot_ms": r.slot_ms,
            "kind": str(r.kind),
            "outcome": str(r.outcome),
            "started_at": _iso(r.started_at),
            "finished_at": _iso(r.finished_at),
            "error": r.error,
        },
        "readings": [
            {**x, "slot_at": _iso(x["slot_at"]), "read_at": _iso(x["read_at"])}
            for x in entry.readings
        ],
    }


def from_json(data: dict) -> Entry:
    if data["type"] == "missed":
        if "slots" in data:  # buffered by an earlier version: a list of consecutive slots
            slots = data["slots"]
            step = slots[1] - slots[0] if len(slots) > 1 else 1
            return MissedRun(data["gateway_id"], slots[0], len(slots), step, data["why"])
        return MissedRun(
            data["gateway_id"], data["first"], data["count"], data["interval"], data["why"]
        )
    r = data["record"]
    record = PollRecord(
        r["gateway_id"],
        r["slot_ms"],
        PollKind(r["kind"]),
        Outcome(r["outcome"]),
        _dt(r["started_at"]),
        _dt(r["finished_at"]),
        r["error"],
    )
    readings = [
        {**x, "slot_at": _dt(x["slot_at"]), "read_at": _dt(x["read_at"])} for x in data["readings"]
    ]
    return PollEntry(record, readings)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# -- writing ---------------------------------------------------------------------------------


def write(
    session: Session,
    entries: Sequence[Entry],
    *,
    failure_threshold: int,
    recovery_first: float = 0.0,
) -> dict[int, str]:
    """Polls in one batch, then the missed runs; returns the disable reasons."""
    polls = [e for e in entries if isinstance(e, PollEntry)]
    reasons = record_polls(
        session, polls, failure_threshold=failure_threshold, recovery_first=recovery_first
    )
    record_missed_runs(session, [e for e in entries if isinstance(e, MissedRun)])
    return reasons


def record_polls(
    session: Session,
    polls: Sequence[PollEntry],
    *,
    failure_threshold: int,
    recovery_first: float = 0.0,
) -> dict[int, str]:
    """Write the poll-log rows and, for each row that is new, its readings (a slot already
    recorded, by a duplicate or as missed by a restart, keeps what it has); a few statements
    for the whole batch. Updates failure counts and returns the disable reason of every
    gateway this batch pushed over the threshold."""
    # The same slot twice in one batch (a buffered entry kept twice) must not write its
    # readings twice: the row goes in once and only its first copy counts as new.
    polls = _first_per_slot(polls)
    if not polls:
        return {}
    rows = [poll_row(p.record) for p in polls]
    fast = pgwrite.is_postgresql(session)
    went_in = (
        pgwrite.insert_polls(session, rows)
        if fast
        else inserted(session, PollLog.__table__, rows, ("gateway_id", "kind", "slot_at"))
    )
    new = {(gateway_id, kind, dt_to_ms(slot_at)) for gateway_id, kind, slot_at in went_in}
    if len(new) < len(polls):
        refused = [p.record for p in polls if _slot_key(p.record) not in new]
        new |= _settle_refused(session, refused)
    fresh = [p for p in polls if _slot_key(p.record) in new]
    readings = [x for p in fresh for x in p.readings]
    if fast:
        pgwrite.copy_readings(session, readings)
    else:
        insert_ignoring_conflicts(session, Reading.__table__, readings)
    counted = [p.record for p in fresh if p.record.kind == PollKind.SCHEDULED]
    oks = [p.record for p in fresh if p.record.outcome == Outcome.OK]
    healthy = sorted({r.gateway_id for r in counted if r.outcome == Outcome.OK})
    if fast:
        pgwrite.update_ok_gateways(session, _ok_rows(oks, set(healthy)))
    else:
        _keep_last_ok(session, oks)
        _recount_healthy(session, healthy)
    newest_failure = {
        r.gateway_id: r for r in sorted(counted, key=_by_slot) if r.outcome == Outcome.FAILED
    }
    reasons = {}
    for gateway_id in sorted(newest_failure):  # one lock order for every writer
        reason = _count_failures(
            session, newest_failure[gateway_id], failure_threshold, recovery_first
        )
        if reason:
            reasons[gateway_id] = reason
    return reasons


def _slot_key(record: PollRecord) -> tuple[int, str, int]:
    return record.gateway_id, str(record.kind), record.slot_ms


def _settle_refused(session: Session, refused: Sequence[PollRecord]) -> set[tuple[int, str, int]]:
    """The records the unique key refused. One whose slot holds a single `missed` row
    (written by a restart that took the chain for dead while this poll ran) replaces it:
    the device served the slot, the guess was wrong. One whose slot holds this very record
    (a buffer flushed again) is harmless. Any other is counted in `slot_conflicts` (the
    key was the last guard). Returns the slots whose record was replaced."""
    held = {
        (gateway_id, kind, dt_to_ms(slot_at)): (outcome, started, slots)
        for gateway_id, kind, slot_at, outcome, started, slots in session.execute(
            select(
                PollLog.gateway_id,
                PollLog.kind,
                PollLog.slot_at,
                PollLog.outcome,
                PollLog.started_at,
                PollLog.slots,
            ).where(
                tuple_(PollLog.gateway_id, PollLog.kind, PollLog.slot_at).in_(
                    [(r.gateway_id, str(r.kind), ms_to_dt(r.slot_ms)) for r in refused]
                )
            )
        )
    }
    replaced: set[tuple[int, str, int]] = set()
    conflicts: dict[int, int] = {}
    for record in refused:
        outcome, started, slots = held.get(_slot_key(record), (None, None, 1))
        if outcome == str(record.outcome) and _same_time(started, record.started_at):
            continue
        if outcome == str(Outcome.MISSED) and slots == 1 and _replace_missed(session, record):
            log.warning(
                "gateway #%s slot %s: written as missed while its poll ran; the poll's %s "
                "record replaces it",
                record.gateway_id,
                ms_to_dt(record.slot_ms).isoformat(),
                record.outcome,
            )
            replaced.add(_slot_key(record))
            continue
        conflicts[record.gateway_id] = conflicts.get(record.gateway_id, 0) + 1
        log.error(
            "gateway #%s slot %s: a %s poll record refused, the slot already holds %s: "
            "counted in slot_conflicts",
            record.gateway_id,
            ms_to_dt(record.slot_ms).isoformat(),
            record.outcome,
            outcome,
        )
    for gateway_id, n in sorted(conflicts.items()):
        session.execute(
            update(GatewayRow)
            .where(GatewayRow.id == gateway_id)
            .values(slot_conflicts=GatewayRow.slot_conflicts + n)
        )
    return replaced


def _replace_missed(session: Session, record: PollRecord) -> bool:
    """Overwrite the slot's single `missed` row with `record` (compare-and-set on the
    outcome, so two arriving records cannot both win)."""
    row = poll_row(record)
    done = session.execute(
        update(PollLog)
        .where(
            PollLog.gateway_id == record.gateway_id,
            PollLog.kind == str(record.kind),
            PollLog.slot_at == ms_to_dt(record.slot_ms),
            PollLog.outcome == str(Outcome.MISSED),
            PollLog.slots == 1,
        )
        .values({k: v for k, v in row.items() if k not in ("gateway_id", "kind", "slot_at")})
    )
    return bool(getattr(done, "rowcount", 0))


def _same_time(a: datetime | None, b: datetime | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(dt_to_ms(a) - dt_to_ms(b)) <= 1


def _first_per_slot(polls: Sequence[PollEntry]) -> list[PollEntry]:
    seen: set[tuple[int, str, int]] = set()
    out = []
    for p in polls:
        key = (p.record.gateway_id, str(p.record.kind), p.record.slot_ms)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _failures_since_last_ok(gateway_id: ColumnElement[int]) -> ScalarSelect[int]:
    """Failed slots newer than the gateway's newest ok slot, from the poll log: counted in
    slot order whatever order records arrive in (a buffered failure flushed after a newer
    success does not count)."""
    log_ok, log_failed = PollLog.__table__.alias(), PollLog.__table__.alias()
    last_ok = (
        select(func.max(log_ok.c.slot_at))
        .where(
            # Correlated to the enclosing count (a reference to the gateways row two
            # levels up would not be: the max would run over every gateway).
            log_ok.c.gateway_id == log_failed.c.gateway_id,
            log_ok.c.kind == str(PollKind.SCHEDULED),
            log_ok.c.outcome == str(Outcome.OK),
        )
        .scalar_subquery()
    )
    return (
        select(func.count())
        .select_from(log_failed)
        .where(
            log_failed.c.gateway_id == gateway_id,
            log_failed.c.kind == str(PollKind.SCHEDULED),
            log_failed.c.outcome == str(Outcome.FAILED),
            or_(last_ok.is_(None), log_failed.c.slot_at > last_ok),
        )
        .scalar_subquery()
    )


def _recount_healthy(session: Session, healthy: list[int]) -> None:
    """Gateways with a new ok record: their count restarts from it (zero, unless failures of
    newer slots were written first)."""
    if not healthy:
        return
    # Conditional, so a healthy gateway's row is not rewritten on every poll; Core, as the
    # ORM's bulk update costs more than the SQL. Counters are state, not configuration:
    # `updated_at` (which tells every process to reload its gateways) is kept as it was.
    table = GatewayRow.__table__
    session.execute(
        update(table)  # type: ignore[arg-type]
        .where(table.c.id.in_(healthy), table.c.consecutive_failures != 0)
        .values(
            consecutive_failures=_failures_since_last_ok(table.c.id),
            updated_at=table.c.updated_at,
        )
    )


def _newest_ok(oks: Sequence[PollRecord]) -> dict[int, datetime]:
    """Each gateway's newest finish among `oks`."""
    newest: dict[int, datetime] = {}
    for r in oks:
        at = r.finished_at or r.started_at
        if at is not None and (r.gateway_id not in newest or at > newest[r.gateway_id]):
            newest[r.gateway_id] = at
    return newest


def _ok_rows(oks: Sequence[PollRecord], healthy: set[int]) -> list[dict]:
    """`pgwrite.update_ok_gateways`'s rows: every gateway with an ok record (and a time)."""
    newest = _newest_ok(oks)
    rows = [{"gid": g, "at": at, "recount": g in healthy} for g, at in newest.items()]
    # A scheduled ok without a time still restarts the count (never seen: records of
    # scheduled polls carry their start).
    rows += [{"gid": g, "at": None, "recount": True} for g in healthy - newest.keys()]
    return rows


def _keep_last_ok(session: Session, oks: Sequence[PollRecord]) -> None:
    """Each gateway's `last_ok_at`: the newest finish among `oks`, never moved back (a
    buffered record flushed late is older). One executemany for the batch."""
    newest = _newest_ok(oks)
    if not newest:
        return
    table = GatewayRow.__table__
    session.execute(
        update(table)  # type: ignore[arg-type]
        .where(
            table.c.id == bindparam("gid"),
            or_(table.c.last_ok_at.is_(None), table.c.last_ok_at < bindparam("at")),
        )
        .values(last_ok_at=bindparam("at"), updated_at=table.c.updated_at),
        [{"gid": g, "at": at} for g, at in sorted(newest.items())],  # one lock order
    )


def _by_slot(record: PollRecord) -> int:
    return record.slot_ms


def _count_failures(
    session: Session, newest: PollRecord, failure_threshold: int, recovery_first: float
) -> str | None:
    """Recount the gateway's failures; disable it when they reach the threshold, with the
    newest failure's error, and open its breaker: recovery probes it `recovery_first`
    seconds later (0: never; the delay still marks it as disabled by failures)."""
    row = session.execute(
        update(GatewayRow)
        .where(GatewayRow.id == newest.gateway_id)
        .values(
            consecutive_failures=_failures_since_last_ok(GatewayRow.__table__.c.id),
            updated_at=GatewayRow.updated_at,
        )
        .returning(GatewayRow.consecutive_failures, GatewayRow.enabled)
    ).first()
    if row is None:
        return None  # deleted meanwhile
    failures, enabled = row
    if failures < failure_threshold or not enabled:
        return None
    reason = f"auto-disabled after {failures} consecutive failed polls; last error: {newest.error}"
    session.execute(
        update(GatewayRow)
        .where(GatewayRow.id == newest.gateway_id)
        .values(
            enabled=False,
            disabled_reason=reason,
            probe_delay_s=recovery_first,
            next_probe_at=(
                (newest.finished_at or datetime.now(UTC)) + timedelta(seconds=recovery_first)
                if recovery_first
                else None
            ),
        )
    )
    return reason


def record_missed_runs(session: Session, runs: Sequence[MissedRun]) -> int:
    """Account for runs of slots that passed without a poll, for several gateways: a row
    per slot for short runs (one statement), one range row for a run longer than
    `RANGE_FROM`. Slots already recorded are kept (a long run is split around them). Returns
    the slots recorded."""
    runs = [part for run in runs for part in _around_recorded(session, run)]
    missed = {"kind": str(PollKind.SCHEDULED), "outcome": str(Outcome.MISSED)}
    rows = [
        {"gateway_id": run.gateway_id, "slot_at": ms_to_dt(slot), "error": run.why, **missed}
        for run in runs
        if run.count <= RANGE_FROM
        for slot in run.slots()
    ]
    if pgwrite.is_postgresql(session):
        # Reconcile after Redis lost ten thousand chains writes tens of thousands.
        timings = {"started_at": None, "finished_at": None, "duration_ms": None}
        recorded = len(pgwrite.insert_polls(session, [{**row, **timings} for row in rows]))
    else:
        recorded = insert_ignoring_conflicts(session, PollLog.__table__, rows)
    ranges = {(run.gateway_id, run.first_ms): run for run in runs if run.count > RANGE_FROM}
    went_in = inserted(
        session,
        PollLog.__table__,
        [
            {
                "gateway_id": run.gateway_id,
                "slot_at": ms_to_dt(run.first_ms),
                "last_slot_at": ms_to_dt(run.last_ms),
                "slots": run.count,
                "error": run.why,
                **missed,
            }
            for run in ranges.values()
        ],
        ("gateway_id", "slot_at"),
    )
    for gateway_id, slot_at in went_in:
        recorded += ranges[(gateway_id, dt_to_ms(slot_at))].count
    return recorded


def _around_recorded(session: Session, run: MissedRun) -> list[MissedRun]:
    """How a long run is written: its first slot (the dead chain's due one) on its own, the
    rest around the slots already recorded. A short run is written slot by slot, where the
    unique key keeps what is there."""
    if run.count <= RANGE_FROM:
        return [run]
    # Its first slot is the dead chain's due one, whose poll may still be running: its own
    # row, which that poll's record can replace (see `_settle_refused`).
    first = MissedRun.one(run.gateway_id, run.first_ms, run.interval_ms, run.why)
    rest = MissedRun(
        run.gateway_id, run.first_ms + run.interval_ms, run.count - 1, run.interval_ms, run.why
    )
    return [first, *_split_around_recorded(session, rest)]


def _split_around_recorded(session: Session, run: MissedRun) -> list[MissedRun]:
    """`run` without the slots its gateway already has a record for (a batch killed after
    writing its records but before advancing its chains leaves its slots recorded at the
    start of the gap): one range row must not swallow, or be refused for, them."""
    held = sorted(
        dt_to_ms(slot_at)
        for slot_at in session.scalars(
            select(PollLog.slot_at).where(
                PollLog.gateway_id == run.gateway_id,
                PollLog.kind == str(PollKind.SCHEDULED),
                PollLog.slot_at >= ms_to_dt(run.first_ms),
                PollLog.slot_at <= ms_to_dt(run.last_ms),
            )
        )
    )
    on_grid = [slot for slot in held if (slot - run.first_ms) % run.interval_ms == 0]
    parts, first = [], run.first_ms
    for slot in [*on_grid, run.last_ms + run.interval_ms]:
        count = (slot - first) // run.interval_ms
        if count > 0:
            parts.append(MissedRun(run.gateway_id, first, count, run.interval_ms, run.why))
        first = max(first, slot + run.interval_ms)
    return parts


def _utc(value: datetime) -> datetime:
    # The typed columns come back aware; an aggregate over them may not on every backend.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def last_recorded_slots(session: Session, gateway_ids: Sequence[int]) -> dict[int, int]:
    """Newest scheduled slot with any record, per gateway (the fallback when Redis lost the
    chain), in one query; gateways with no record are left out."""
    out: dict[int, int] = {}
    for first in range(0, len(gateway_ids), 1000):
        part = list(gateway_ids[first : first + 1000])
        rows = session.execute(
            select(
                PollLog.gateway_id, func.max(func.coalesce(PollLog.last_slot_at, PollLog.slot_at))
            )
            .where(PollLog.gateway_id.in_(part), PollLog.kind == PollKind.SCHEDULED)
            .group_by(PollLog.gateway_id)
        )
        for gateway_id, newest in rows:
            if newest is not None:
                out[gateway_id] = dt_to_ms(_utc(newest))
    return out
