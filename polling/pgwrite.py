"""The batch record on PostgreSQL without per-row work in Python: the poll-log rows in one
INSERT over arrays (`unnest`), conflict-ignoring with RETURNING; the readings of the new
rows by COPY. SQLAlchemy's executemany spent most of a worker's CPU at a thousand polls
a second; this is the same statement semantics at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy.orm import Session

_POLLS = """
INSERT INTO poll_log
  (gateway_id, slot_at, kind, outcome, started_at, finished_at, duration_ms, error)
SELECT * FROM unnest(
  %s::integer[], %s::timestamptz[], %s::varchar[], %s::varchar[],
  %s::timestamptz[], %s::timestamptz[], %s::float8[], %s::text[])
ON CONFLICT DO NOTHING
RETURNING gateway_id, kind, slot_at
"""
_POLL_COLUMNS = (
    "gateway_id",
    "slot_at",
    "kind",
    "outcome",
    "started_at",
    "finished_at",
    "duration_ms",
    "error",
)
_READINGS = (
    "COPY readings (gateway_id, point, slot_at, kind, read_at, value, text, unit) FROM STDIN"
)
_READING_COLUMNS = ("gateway_id", "point", "slot_at", "kind", "read_at", "value", "text", "unit")


# Each ok gateway's row: `last_ok_at` never moved back, and, for a new scheduled ok, the
# failure count restarted from the poll log (failures of newer slots written first still
# count). `records._keep_last_ok` and `records._recount_healthy` in one statement; the
# row keeps `updated_at` (state, not configuration).
_OK_GATEWAYS = """
UPDATE gateways SET
  last_ok_at = GREATEST(last_ok_at, %(at)s),
  consecutive_failures = CASE WHEN %(recount)s AND consecutive_failures <> 0 THEN (
    SELECT count(*) FROM poll_log f
    WHERE f.gateway_id = gateways.id AND f.kind = 'scheduled' AND f.outcome = 'failed'
      AND f.slot_at > COALESCE((
        SELECT max(o.slot_at) FROM poll_log o
        WHERE o.gateway_id = gateways.id AND o.kind = 'scheduled' AND o.outcome = 'ok'
      ), '-infinity')
  ) ELSE consecutive_failures END
WHERE id = %(gid)s
  AND (last_ok_at IS NULL OR last_ok_at < %(at)s OR (%(recount)s AND consecutive_failures <> 0))
"""


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def insert_polls(session: Session, rows: Sequence[dict]) -> list[tuple]:
    """Poll-log rows, skipping slots already recorded; returns (gateway_id, kind, slot_at)
    of those that went in."""
    if not rows:
        return []
    # One order for every writer (workers, reconcile): conflicting inserts then wait for
    # each other instead of deadlocking.
    rows = sorted(rows, key=lambda r: (r["gateway_id"], r["slot_at"], r["kind"]))
    columns = [[row[name] for row in rows] for name in _POLL_COLUMNS]
    cursor = _driver(session).cursor()
    try:
        cursor.execute(_POLLS, columns)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def copy_readings(session: Session, rows: Sequence[dict]) -> None:
    """Readings of poll-log rows this transaction inserted: none can exist yet, so COPY
    needs no conflict handling."""
    if not rows:
        return
    cursor = _driver(session).cursor()
    try:
        with cursor.copy(_READINGS) as copy:
            for row in rows:
                copy.write_row(tuple(row[name] for name in _READING_COLUMNS))
    finally:
        cursor.close()


def update_ok_gateways(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Each ok gateway's row (`gid`, `at`: its newest finish, `recount`: a new scheduled ok)
    in one executemany, in id order: one lock order for every writer."""
    if not rows:
        return
    ordered: list[dict[str, Any]] = sorted(rows, key=lambda r: r["gid"])
    cursor = _driver(session).cursor()
    try:
        cursor.executemany(_OK_GATEWAYS, ordered)
    finally:
        cursor.close()


def _driver(session: Session) -> psycopg.Connection:
    """The psycopg connection under the session's transaction."""
    return session.connection().connection.driver_connection  # type: ignore[return-value]
