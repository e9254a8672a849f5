"""The poll record: one poll-log row per slot and one reading per point, written in one
transaction now, or kept in the Redis buffer while the database is unreachable.

An entry is a poll (its row and readings) or a run of slots that passed without a poll;
the buffer keeps entries as plain JSON (`to_json` / `from_json`), so one function writes
them now or later.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from . import pgwrite
from .buffer import Refusals
from .db import insert_ignoring_conflicts, inserted, is_unreachable
from .gateways import Point
from .models import GatewayRow, PollLog, Reading
from .outcome import Outcome, PollKind
from .runtime import Runtime
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


@dataclass(frozen=True)
class MissedRun:
    """Slots of one gateway that passed without a poll, and why."""

    gateway_id: int
    slots_ms: Sequence[int]
    why: str


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
        slots = entry.slots_ms
        first, last = (slots[0], slots[-1]) if slots else (0, 0)
        return f"missed:{entry.gateway_id}:{first}:{last}:{len(slots)}"
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
            "slots": list(entry.slots_ms),
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
        return MissedRun(data["gateway_id"], data["slots"], data["why"])
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


def save(rt: Runtime, entries: Sequence[Entry]) -> dict[int, str]:
    """Write `entries` in one transaction, or keep them all in the buffer when the database
    is unreachable. Returns the disable reason of every gateway a failed poll pushed over
    the failure threshold (a buffered entry's is known only when flushed)."""
    if not entries:
        return {}
    try:
        with rt.sessions() as session, session.begin():
            return write(session, entries, failure_threshold=rt.settings.failure_threshold)
    except DBAPIError as exc:
        if not is_unreachable(exc):
            raise
        reason = str(exc.orig or exc).strip().splitlines()[0] if exc.orig else str(exc)
        kept = sum(rt.buffer.push(to_json(entry), rt.clock()) for entry in entries)
        if kept:
            log.warning("database unreachable (%s): %s records buffered in Redis", reason, kept)
        if kept < len(entries):
            log.error(
                "database unreachable and buffer full: %s records lost (counted)",
                len(entries) - kept,
            )
        return {}


def flush(rt: Runtime) -> int:
    """Write what the buffer holds, oldest first, putting aside (as dead letters) entries
    the database refuses; raises only while the database is unreachable. Returns the
    entries written."""
    if not rt.buffer.pending():
        return 0
    done = rt.buffer.flush(partial(_write_buffered, rt), rt.clock)
    if done.written:
        rt.bump_config()  # a buffered failure may have disabled a gateway
        log.warning("flushed %s buffered records to the database", done.written)
    if done.dead:
        log.error(
            "%s buffered records refused by the database, kept aside: pollctl buffer show",
            done.dead,
        )
    return done.written


def _write_buffered(rt: Runtime, batch: list[dict]) -> Refusals:
    """The batch in one transaction; when the database refuses it (not when it is
    unreachable), each entry in its own, so only the entries at fault are refused."""
    try:
        _write_plain(rt, batch)
        return {}
    except Exception as exc:  # which entry is at fault is found below
        _raise_if_unreachable(exc)
    refused: Refusals = {}
    for index, item in enumerate(batch):
        try:
            _write_plain(rt, [item])
        except Exception as exc:  # an entry's own fault puts it aside
            _raise_if_unreachable(exc)
            refused[index] = _one_line(exc)
    return refused


def _write_plain(rt: Runtime, batch: list[dict]) -> None:
    with rt.sessions() as session, session.begin():
        entries = [from_json(item) for item in batch]
        write(session, entries, failure_threshold=rt.settings.failure_threshold)


def _raise_if_unreachable(exc: Exception) -> None:
    if isinstance(exc, DBAPIError) and is_unreachable(exc):
        raise exc


def _one_line(exc: Exception) -> str:
    cause: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"


def write(session: Session, entries: Sequence[Entry], *, failure_threshold: int) -> dict[int, str]:
    """Polls in one batch, then the missed runs; returns the disable reasons."""
    polls = [e for e in entries if isinstance(e, PollEntry)]
    reasons = record_polls(session, polls, failure_threshold=failure_threshold)
    record_missed_runs(session, [e for e in entries if isinstance(e, MissedRun)])
    return reasons


def record_polls(
    session: Session, polls: Sequence[PollEntry], *, failure_threshold: int
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
    fresh = [p for p in polls if (p.record.gateway_id, p.record.kind, p.record.slot_ms) in new]
    readings = [x for p in fresh for x in p.readings]
    if fast:
        pgwrite.copy_readings(session, readings)
    else:
        insert_ignoring_conflicts(session, Reading.__table__, readings)
    counted = [p.record for p in fresh if p.record.kind == PollKind.SCHEDULED]
    _reset_failures(session, sorted({r.gateway_id for r in counted if r.outcome == Outcome.OK}))
    reasons = {}
    for record in sorted((r for r in counted if r.outcome == Outcome.FAILED), key=_by_gateway):
        reason = _count_failure(session, record, failure_threshold)
        if reason:
            reasons[record.gateway_id] = reason
    return reasons


def _first_per_slot(polls: Sequence[PollEntry]) -> list[PollEntry]:
    seen: set[tuple[int, str, int]] = set()
    out = []
    for p in polls:
        key = (p.record.gateway_id, str(p.record.kind), p.record.slot_ms)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _reset_failures(session: Session, healthy: list[int]) -> None:
    if not healthy:
        return
    # Conditional, so a healthy gateway's row is not rewritten on every poll; Core, as the
    # ORM's bulk update costs more than the SQL.
    table = GatewayRow.__table__
    session.execute(
        update(table)  # type: ignore[arg-type]
        .where(table.c.id.in_(healthy), table.c.consecutive_failures != 0)
        .values(consecutive_failures=0, updated_at=table.c.updated_at)
    )


def _by_gateway(record: PollRecord) -> tuple[int, int]:
    return record.gateway_id, record.slot_ms  # one lock order for every writer


def _count_failure(session: Session, record: PollRecord, failure_threshold: int) -> str | None:
    # Counters are state, not configuration: `updated_at` (which tells every process to
    # reload its gateways) is kept as it was.
    row = session.execute(
        update(GatewayRow)
        .where(GatewayRow.id == record.gateway_id)
        .values(
            consecutive_failures=GatewayRow.consecutive_failures + 1,
            updated_at=GatewayRow.updated_at,
        )
        .returning(GatewayRow.consecutive_failures, GatewayRow.enabled)
    ).first()
    if row is None:
        return None  # deleted meanwhile
    failures, enabled = row
    if failures < failure_threshold or not enabled:
        return None
    reason = f"auto-disabled after {failures} consecutive failed polls; last error: {record.error}"
    session.execute(
        update(GatewayRow)
        .where(GatewayRow.id == record.gateway_id)
        .values(enabled=False, disabled_reason=reason)
    )
    return reason


def record_missed_runs(session: Session, runs: Sequence[MissedRun]) -> int:
    """Account for runs of slots that passed without a poll, for several gateways, in one
    statement. Slots already recorded are kept."""
    rows = [
        {
            "gateway_id": run.gateway_id,
            "slot_at": ms_to_dt(slot),
            "kind": str(PollKind.SCHEDULED),
            "outcome": str(Outcome.MISSED),
            "error": run.why,
        }
        for run in runs
        for slot in run.slots_ms
    ]
    if pgwrite.is_postgresql(session):
        # Reconcile after Redis lost ten thousand chains writes hundreds of thousands.
        timings = {"started_at": None, "finished_at": None, "duration_ms": None}
        return len(pgwrite.insert_polls(session, [{**row, **timings} for row in rows]))
    return insert_ignoring_conflicts(session, PollLog.__table__, rows)


def last_recorded_slots(session: Session, gateway_ids: Sequence[int]) -> dict[int, int]:
    """Newest scheduled slot with any record, per gateway (the fallback when Redis lost the
    chain), in one query; gateways with no record are left out."""
    out: dict[int, int] = {}
    for first in range(0, len(gateway_ids), 1000):
        part = list(gateway_ids[first : first + 1000])
        rows = session.execute(
            select(PollLog.gateway_id, func.max(PollLog.slot_at))
            .where(PollLog.gateway_id.in_(part), PollLog.kind == PollKind.SCHEDULED)
            .group_by(PollLog.gateway_id)
        )
        for gateway_id, newest in rows:
            if newest is not None:
                out[gateway_id] = dt_to_ms(newest if newest.tzinfo else newest.replace(tzinfo=UTC))
    return out
