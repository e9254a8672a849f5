"""Writing the record of polls, through the buffer when the database is unreachable.

An entry is a poll (its poll-log row and readings) or a run of missed slots, as plain JSON,
so the same function writes it now or later from the buffer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from .runtime import Runtime
from .store import PollRecord, record_missed, record_poll

log = logging.getLogger(__name__)


def poll_entry(record: PollRecord, readings: Sequence[dict]) -> dict:
    return {
        "type": "poll",
        "record": {
            "gateway_id": record.gateway_id,
            "slot_ms": record.slot_ms,
            "kind": record.kind,
            "outcome": record.outcome,
            "started_at": _iso(record.started_at),
            "finished_at": _iso(record.finished_at),
            "error": record.error,
        },
        "readings": [
            {**r, "slot_at": _iso(r["slot_at"]), "read_at": _iso(r["read_at"])} for r in readings
        ],
    }


def missed_entry(gateway_id: int, slots_ms: Sequence[int], why: str) -> dict:
    return {"type": "missed", "gateway_id": gateway_id, "slots": list(slots_ms), "why": why}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def write_entry(session: Session, entry: dict, *, failure_threshold: int) -> str | None:
    """Write one entry; returns the disable reason if a poll crossed the failure threshold."""
    if entry["type"] == "missed":
        record_missed(session, entry["gateway_id"], entry["slots"], entry["why"])
        return None
    r = entry["record"]
    record = PollRecord(
        r["gateway_id"],
        r["slot_ms"],
        r["kind"],
        r["outcome"],
        _dt(r["started_at"]),
        _dt(r["finished_at"]),
        r["error"],
    )
    readings = [
        {**x, "slot_at": _dt(x["slot_at"]), "read_at": _dt(x["read_at"])} for x in entry["readings"]
    ]
    return record_poll(session, record, readings, failure_threshold=failure_threshold)


def is_unreachable(exc: DBAPIError) -> bool:
    return isinstance(exc, OperationalError) or exc.connection_invalidated


def save(rt: Runtime, entry: dict) -> str | None:
    """Write `entry` now, or keep it in the buffer when the database is unreachable.
    Returns the disable reason, if any (a buffered entry's is known only when flushed)."""
    try:
        with rt.sessions() as session, session.begin():
            return write_entry(session, entry, failure_threshold=rt.settings.failure_threshold)
    except DBAPIError as exc:
        if not is_unreachable(exc):
            raise
        reason = str(exc.orig or exc).strip().splitlines()[0] if exc.orig else str(exc)
        if rt.buffer.push(entry, rt.clock()):
            log.warning("database unreachable (%s): record buffered in Redis", reason)
        else:
            log.error("database unreachable and buffer full: record lost (counted)")
        return None


def flush(rt: Runtime) -> int:
    """Write what the buffer holds, oldest first; raises while the database is down."""
    if not rt.buffer.pending():
        return 0

    def write(entries: list[dict]) -> None:
        with rt.sessions() as session, session.begin():
            for entry in entries:
                write_entry(session, entry, failure_threshold=rt.settings.failure_threshold)

    written = rt.buffer.flush(write)
    if written:
        rt.bump_config()  # a buffered failure may have disabled a gateway
        log.warning("flushed %s buffered records to the database", written)
    return written
