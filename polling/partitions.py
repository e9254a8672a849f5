"""PostgreSQL's declarative partitions of the record: `readings` and `poll_log` by day of
`slot_at` (UTC), a DEFAULT partition so no write ever fails for lack of one, and the
partitions made ahead of the rows that will fill them.

Why daily: at 1,000 polls/s a day of readings is some 950 million rows (tens of GB, see the
README's *Retention*). Retention then drops a day at a time and keeps at most a day more
than asked; a 90-day retention is about 90 partitions per table, few enough for the planner
and the lock manager (hourly would be 2,160; weekly would keep up to a week more on disk).
SQLite has no partitions: everything here is a no-op there.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

#: The tables partitioned by day of `slot_at` on PostgreSQL.
PARTITIONED = ("readings", "poll_log")
#: Days of partitions kept ready after today's (the daily task renews them).
DAYS_AHEAD = 3
DAY = timedelta(days=1)
#: How long partition DDL waits for a table lock before giving up. A waiting ACCESS
#: EXCLUSIVE request queues every later writer behind it, so it must never wait long.
LOCK_TIMEOUT = "2s"

_BOUND = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")


@dataclass(frozen=True)
class Partition:
    """One partition of a table: rows with `lower <= slot_at < upper` (None: unbounded),
    or the DEFAULT partition (both None, `default` set)."""

    name: str
    lower: datetime | None
    upper: datetime | None
    default: bool = False


def is_postgresql(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def is_partitioned(conn: Connection, table: str) -> bool:
    if not is_postgresql(conn):
        return False
    kind = conn.execute(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table}
    ).scalar()
    return kind == "p"


def partitions(conn: Connection, table: str) -> list[Partition]:
    """The partitions of `table`, oldest first, DEFAULT last."""
    rows = conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": table},
    ).all()
    found = [_partition(name, bound) for name, bound in rows]
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(found, key=lambda p: (p.default, p.lower or oldest))


def _partition(name: str, bound: str) -> Partition:
    if bound == "DEFAULT":
        return Partition(name, None, None, default=True)
    match = _BOUND.fullmatch(bound)
    if not match:
        raise ValueError(f"partition {name}: unexpected bound {bound!r}")
    return Partition(name, _bound(match[1]), _bound(match[2]))


def _bound(value: str) -> datetime | None:
    if value in ("MINVALUE", "MAXVALUE"):
        return None
    return datetime.fromisoformat(value.strip("'")).astimezone(UTC)


def day_of(moment: datetime) -> datetime:
    """The start (UTC midnight) of the day holding `moment`."""
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def partition_name(table: str, day: datetime) -> str:
    return f"{table}_p{day:%Y%m%d}"


def default_name(table: str) -> str:
    return f"{table}_default"


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(moment: datetime) -> str:
    """A timestamptz literal for DDL (partition bounds take no parameters)."""
    return f"'{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}+00'"


def ensure(conn: Connection, *, now: datetime, days_ahead: int = DAYS_AHEAD) -> list[str]:
    """The DEFAULT partition and a partition per day from `now`'s to `days_ahead` days
    after it, for each partitioned table; returns the partitions it created. A day whose
    rows already sit in DEFAULT (written before its partition existed) is left there:
    PostgreSQL refuses the partition, and cleanup deletes those rows in batches."""
    if not is_postgresql(conn):
        return []
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    created = []
    for table in PARTITIONED:
        if not is_partitioned(conn, table):
            continue
        existing = partitions(conn, table)
        if not any(p.default for p in existing):
            name = default_name(table)
            conn.execute(text(f"CREATE TABLE {quoted(name)} PARTITION OF {table} DEFAULT"))
            created.append(name)
        first = day_of(now)
        for n in range(days_ahead + 1):
            lower = first + n * DAY
            if _covered(existing, lower, lower + DAY):
                continue
            if _in_default(conn, table, lower, lower + DAY):
                log.warning(
                    "%s: rows of %s are in %s, so its partition is not created (they are "
                    "kept, and deleted in batches when they pass their retention)",
                    table,
                    f"{lower:%Y-%m-%d}",
                    default_name(table),
                )
                continue
            name = partition_name(table, lower)
            conn.execute(
                text(
                    f"CREATE TABLE {quoted(name)} PARTITION OF {table} "
                    f"FOR VALUES FROM ({literal(lower)}) TO ({literal(lower + DAY)})"
                )
            )
            created.append(name)
    return created


def ensure_ahead(engine: Engine, *, now: datetime | None = None) -> list[str]:
    """`ensure` in a transaction of its own: what `pollctl db upgrade`, `pollctl start` and
    the daily cleanup call."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.begin() as conn:
        return ensure(conn, now=now or datetime.now(UTC))


def _covered(existing: list[Partition], lower: datetime, upper: datetime) -> bool:
    """Whether a partition other than DEFAULT already takes some of [lower, upper)."""
    return any(
        not p.default
        and (p.lower is None or p.lower < upper)
        and (p.upper is None or p.upper > lower)
        for p in existing
    )


def _in_default(conn: Connection, table: str, lower: datetime, upper: datetime) -> bool:
    return bool(
        conn.execute(
            text(
                f"SELECT 1 FROM {quoted(default_name(table))} "
                "WHERE slot_at >= :lower AND slot_at < :upper LIMIT 1"
            ),
            {"lower": lower, "upper": upper},
        ).first()
    )


def drop(conn: Connection, table: str, partition: Partition) -> None:
    """Detach then drop a whole partition in one transaction (tests and a quiet database;
    retention does the two in transactions of their own, see `detach`)."""
    detach(conn, table, partition)
    drop_detached(conn, partition.name)


def detach(conn: Connection, table: str, partition: Partition) -> None:
    """Detach a whole partition: a moment's lock on the parent, instead of deleting its
    rows one by one. (DETACH ... CONCURRENTLY would take a weaker lock but is refused on a
    table with a DEFAULT partition.) Commit before `drop_detached`: dropping the table also
    locks the gateways table its foreign key references, and a poll's write holding that
    while it waits to insert into the parent would close a deadlock with this lock."""
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    conn.execute(text(f"ALTER TABLE {table} DETACH PARTITION {quoted(partition.name)}"))


def drop_detached(conn: Connection, name: str) -> None:
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    conn.execute(text(f"DROP TABLE IF EXISTS {quoted(name)}"))


def estimated_rows(conn: Connection, name: str) -> int | None:
    """The planner's row count of one partition (pg_class.reltuples, as of its last ANALYZE
    or VACUUM); None when it was never analyzed."""
    value = conn.execute(
        text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:t)"), {"t": quoted(name)}
    ).scalar()
    return None if value is None or value < 0 else int(value)
