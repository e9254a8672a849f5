"""Retention: rows older than each table's period go, in work that never holds a table for
long. On PostgreSQL a partition wholly older than the cut is detached and dropped (a
moment's lock, whatever its size); the rows older than the cut elsewhere (the partition
the cut falls in, DEFAULT, the legacy partition of a converted table, tables that are not
partitioned, and every table on SQLite) are deleted in batches of `batch_size` rows, each
its own short transaction, found through the time index and deleted by physical row id.

`pollctl cleanup` and beat's daily task both run `cleanup`; `--dry-run` only counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import Connection, Engine, bindparam, inspect, text
from sqlalchemy.exc import OperationalError

from . import partitions
from .models import UTCDateTime
from .partitions import Partition, quoted
from .settings import ENV_PREFIX, Settings
from .timefmt import iso_z

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Rows per delete: each batch is one short transaction (well under a second).
BATCH_SIZE = 10_000
#: Attempts at dropping one partition when its lock is not granted within
#: partitions.LOCK_TIMEOUT (a long query reading the table holds it), a second apart.
DROP_ATTEMPTS = 5
LOCK_NOT_AVAILABLE = "55P03"
DEADLOCK = "40P01"
#: Partitions a report line names before it counts the rest.
NAMED = 3


@dataclass(frozen=True)
class Retained:
    """A table retention trims: its rows whose `time_column` is older than the period of
    the `setting` (a Settings field) go, and of those only the ones matching `only` (SQL)."""

    table: str
    time_column: str
    setting: str
    only: str = ""

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.setting.upper()


#: Every table retention trims; a new one joins with one line.
RETAINED: list[Retained] = [
    Retained("readings", "slot_at", "retain_readings"),
    Retained("poll_log", "slot_at", "retain_poll_log"),
    Retained("diagnostic_runs", "ran_at", "retain_diagnostics"),
    Retained("alerts", "resolved_at", "retain_alerts", only="state = 'resolved'"),
]


@dataclass
class TableReport:
    """What a cleanup did (or, dry, would do) to one table."""

    table: str
    #: Rows older than this go; None when the table is kept forever.
    cut: datetime | None
    #: The setting that keeps it forever, or why the table was not looked at.
    kept: str = ""
    #: Rows deleted in batches (counted exactly on a dry run).
    deleted: int = 0
    #: Partitions dropped whole, and their rows (the planner's estimate).
    dropped: list[str] = field(default_factory=list)
    dropped_rows: int = 0

    def line(self, *, dry_run: bool) -> str:
        if self.cut is None:
            return f"{self.table}: {self.kept}"
        said = f"{self.table}: {'would delete' if dry_run else 'deleted'} {self.deleted:,} rows"
        if self.dropped:
            names = ", ".join(self.dropped[:NAMED])
            if len(self.dropped) > NAMED:
                names += f" and {len(self.dropped) - NAMED} more"
            drop = "drop" if dry_run else "dropped"
            plural = "s" if len(self.dropped) > 1 else ""
            said += (
                f" and {drop} {len(self.dropped)} partition{plural} ({names}: "
                f"~{self.dropped_rows:,} rows, the planner's estimate)"
            )
        return f"{said}, older than {iso_z(self.cut)}"

    @property
    def removed(self) -> int:
        return self.deleted + self.dropped_rows


def run(
    engine: Engine,
    settings: Settings,
    *,
    now: datetime,
    older_than: timedelta | None = None,
    dry_run: bool = False,
    progress: Callable[[TableReport], None] | None = None,
) -> tuple[list[TableReport], list[str]]:
    """What beat's daily task and `pollctl cleanup` do: the partitions of the days ahead
    (see partitions.ensure; not on a dry run), then `cleanup`. Returns the reports and the
    partitions created."""
    created = [] if dry_run else partitions.ensure_ahead(engine, now=now)
    reports = cleanup(
        engine, settings, now=now, older_than=older_than, dry_run=dry_run, progress=progress
    )
    return reports, created


def cuts(
    settings: Settings, *, now: datetime, older_than: timedelta | None = None
) -> dict[str, datetime | None]:
    """Each table's cut. `older_than` (the CLI's option) overrides every period and counts
    from `now`. The settings' periods count from the start of today (UTC), so a whole-day
    period cuts at a partition's bound: the daily run drops days and deletes no row one by
    one; a table keeps at most a day more than its period."""
    if older_than is not None:
        return {r.table: now - older_than for r in RETAINED}
    today = partitions.day_of(now)
    out: dict[str, datetime | None] = {}
    for r in RETAINED:
        period = settings.retention(r.setting)
        out[r.table] = today - period if period else None
    return out


def cleanup(
    engine: Engine,
    settings: Settings,
    *,
    now: datetime,
    older_than: timedelta | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[TableReport], None] | None = None,
) -> list[TableReport]:
    """Trim every table of RETAINED to its period (see `cuts`); a report per table, each
    handed to `progress` as soon as its table is done."""
    reports = []
    tables = set(inspect(engine).get_table_names())
    cut_of = cuts(settings, now=now, older_than=older_than)
    for retained in RETAINED:
        cut = cut_of[retained.table]
        report = TableReport(retained.table, cut)
        if retained.table not in tables:
            report.cut, report.kept = None, "not in this database"
        elif cut is None:
            report.kept = f"kept forever ({retained.variable}=0)"
        else:
            _trim(engine, retained, report, cut, dry_run=dry_run, batch_size=batch_size)
        if progress:
            progress(report)
        reports.append(report)
    return reports


def _trim(
    engine: Engine,
    retained: Retained,
    report: TableReport,
    cut: datetime,
    *,
    dry_run: bool,
    batch_size: int,
) -> None:
    with engine.connect() as conn:
        partitioned = partitions.is_partitioned(conn, retained.table)
        parts = partitions.partitions(conn, retained.table) if partitioned else []
    whole = [p for p in parts if _older(p, cut)]
    # Where rows older than the cut can be, apart from the whole partitions.
    relations = [p.name for p in parts if p not in whole and _reaches_below(p, cut)]
    if not partitioned:
        relations = [retained.table]
    for partition in whole:
        if dry_run:
            with engine.connect() as conn:
                report.dropped_rows += _estimate(conn, partition.name)
        else:
            report.dropped_rows += _drop(engine, retained.table, partition)
        report.dropped.append(partition.name)
    for relation in relations:
        if dry_run:
            with engine.connect() as conn:
                report.deleted += conn.execute(
                    _statement("count", retained, relation, conn), {"cut": cut}
                ).scalar_one()
        else:
            report.deleted += _delete(engine, retained, relation, cut, batch_size)


def _older(p: Partition, cut: datetime) -> bool:
    return not p.default and p.upper is not None and p.upper <= cut


def _reaches_below(p: Partition, cut: datetime) -> bool:
    return p.default or p.lower is None or p.lower < cut


def _statement(kind: str, retained: Retained, relation: str, conn: Connection):  # type: ignore[no-untyped-def]
    """`count` of the rows older than the cut in `relation`, or `delete` of a batch of them
    (PostgreSQL by ctid: `= ANY(ARRAY(...))` is a TID scan, where `IN (...)` would scan the
    whole table; SQLite by rowid)."""
    where = f"{retained.time_column} < :cut" + (f" AND ({retained.only})" if retained.only else "")
    rel = quoted(relation)
    if kind == "count":
        sql = f"SELECT count(*) FROM {rel} WHERE {where}"
    elif partitions.is_postgresql(conn):
        batch = f"SELECT ctid FROM {rel} WHERE {where} LIMIT :n"
        sql = f"DELETE FROM {rel} WHERE ctid = ANY(ARRAY({batch}))"
    else:
        batch = f"SELECT rowid FROM {rel} WHERE {where} LIMIT :n"
        sql = f"DELETE FROM {rel} WHERE rowid IN ({batch})"
    return text(sql).bindparams(bindparam("cut", type_=UTCDateTime()))


def _delete(engine: Engine, retained: Retained, relation: str, cut: datetime, n: int) -> int:
    """Batches of `n` rows, a transaction each, until fewer than `n` go."""
    total = 0
    while True:
        with engine.begin() as conn:
            done = conn.execute(
                _statement("delete", retained, relation, conn), {"cut": cut, "n": n}
            )
            count = int(done.rowcount or 0)
        total += count
        if count < n:
            return total


def _estimate(conn: Connection, name: str) -> int:
    """The planner's count of a partition's rows; counted when it was never analyzed."""
    estimate = partitions.estimated_rows(conn, name)
    if estimate is None:
        return int(conn.execute(text(f"SELECT count(*) FROM {quoted(name)}")).scalar_one())
    return estimate


def _drop(engine: Engine, table: str, partition: Partition) -> int:
    """Detach, then drop, one partition, each in its own short transaction; its estimated
    rows."""

    def detach(conn: Connection) -> int:
        rows = _estimate(conn, partition.name)
        partitions.detach(conn, table, partition)
        return rows

    rows = _retried(engine, detach, f"{table}: {partition.name}")
    _retried(engine, lambda conn: partitions.drop_detached(conn, partition.name), partition.name)
    return rows


def _retried(engine: Engine, step: Callable[[Connection], T], what: str) -> T:
    """`step` in a transaction, again a second later while its lock is not granted in
    time or PostgreSQL chose it as a deadlock's victim (a poll's write went first)."""
    for attempt in range(1, DROP_ATTEMPTS + 1):
        try:
            with engine.begin() as conn:
                return step(conn)
        except OperationalError as exc:
            code = getattr(exc.orig, "sqlstate", None)
            if code not in (LOCK_NOT_AVAILABLE, DEADLOCK) or attempt == DROP_ATTEMPTS:
                raise
            log.warning("%s busy, trying again in a second", what)
            time.sleep(1)
    raise AssertionError("unreachable")
