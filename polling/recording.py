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
from .store import PollRecord, record_missed_runs, record_polls

log = logging.getLogger(__name__)


def poll_entry(record: PollRecord, readings: Sequence[dict]) -> dict:
    """A poll as written now; `as_json` turns it into the buffer's plain form."""
    return {"type": "poll", "record": record, "readings": readings}


def as_json(entry: dict) -> dict:
    """The entry in plain JSON types (datetimes as ISO text), for the buffer."""
    record = entry.get("record")
    if not isinstance(record, PollRecord):
        return entry
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
            {**r, "slot_at": _iso(r["slot_at"]), "read_at": _iso(r["read_at"])}
            for r in entry["readings"]
        ],
    }


def missed_entry(gateway_id: int, slots_ms: Sequence[int], why: str) -> dict:
    return {"type": "missed", "gateway_id": gateway_id, "slots": list(slots_ms), "why": why}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def write_entries(
    session: Session, entries: Sequence[dict], *, failure_threshold: int
) -> dict[int, str]:
    """Write entries (polls in one batch, then missed runs); returns the disable reason of
    every gateway a poll pushed over the failure threshold."""
    polls = [_poll_of(e) for e in entries if e["type"] == "poll"]
    reasons = record_polls(session, polls, failure_threshold=failure_threshold)
    missed = [e for e in entries if e["type"] == "missed"]
    record_missed_runs(session, [(e["gateway_id"], e["slots"], e["why"]) for e in missed])
    return reasons


def _poll_of(entry: dict) -> tuple[PollRecord, list[dict]]:
    r = entry["record"]
    if isinstance(r, PollRecord):
        return r, list(entry["readings"])
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
    return record, readings


def is_unreachable(exc: DBAPIError) -> bool:
    return isinstance(exc, OperationalError) or exc.connection_invalidated


def save(rt: Runtime, entry: dict) -> str | None:
    """Write `entry` now, or keep it in the buffer when the database is unreachable.
    Returns the disable reason, if any (a buffered entry's is known only when flushed)."""
    entries = [entry]
    return next(iter(save_many(rt, entries).values()), None)


def save_many(rt: Runtime, entries: Sequence[dict]) -> dict[int, str]:
    """`save` for a batch, in one transaction: all written, or all buffered."""
    if not entries:
        return {}
    try:
        with rt.sessions() as session, session.begin():
            return write_entries(session, entries, failure_threshold=rt.settings.failure_threshold)
    except DBAPIError as exc:
        if not is_unreachable(exc):
            raise
        reason = str(exc.orig or exc).strip().splitlines()[0] if exc.orig else str(exc)
        kept = sum(rt.buffer.push(as_json(entry), rt.clock()) for entry in entries)
        if kept:
            log.warning("database unreachable (%s): %s records buffered in Redis", reason, kept)
        if kept < len(entries):
            log.error(
                "database unreachable and buffer full: %s records lost (counted)",
                len(entries) - kept,
            )
        return {}


def flush(rt: Runtime) -> int:
    """Write what the buffer holds, oldest first; raises while the database is down."""
    if not rt.buffer.pending():
        return 0

    def write(entries: list[dict]) -> None:
        with rt.sessions() as session, session.begin():
            write_entries(session, entries, failure_threshold=rt.settings.failure_threshold)

    written = rt.buffer.flush(write)
    if written:
        rt.bump_config()  # a buffered failure may have disabled a gateway
        log.warning("flushed %s buffered records to the database", written)
    return written
