"""`python -m bench.disk`: bytes on disk per reading and per poll-log row on PostgreSQL,
indexes included, measured: a scratch database at the schema's head, `--rows` of each
written into one day's partition as a fleet writes them (slot after slot, every gateway's
points in each), VACUUM ANALYZE, then `pg_total_relation_size` of the partitions; then a
year at `--polls` polls/s with `--points` points per poll, extrapolated. The README's
*Retention* quotes its output."""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from polling import migrate, partitions
from polling.db import make_engine

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
GATEWAYS = 1000

_GATEWAYS = """
INSERT INTO gateways (id, name, host, port, device_id, interval_s, timeout_s, enabled,
  polling, consecutive_failures, slot_conflicts, created_at, updated_at)
SELECT g, 'meter-' || g, '10.0.' || (g / 250) || '.' || (g %% 250), 502, 1, 1, 1, true, true,
  0, 0, now(), now() FROM generate_series(1, %(gateways)s) g
"""
# Poll n is gateway n % GATEWAYS at slot n / GATEWAYS seconds into the day.
_POLLS = """
INSERT INTO poll_log (gateway_id, slot_at, kind, outcome, started_at, finished_at,
  duration_ms, slots)
SELECT 1 + n %% %(gateways)s, s, 'scheduled', 'ok', s + interval '1.2 ms',
  s + interval '9.5 ms', 8.3, 1
FROM generate_series(0, %(rows)s - 1) n,
  LATERAL (SELECT %(day)s::timestamptz + (n / %(gateways)s) * interval '1 second' AS s) t
"""
_READINGS = """
INSERT INTO readings (gateway_id, point, slot_at, kind, read_at, value, text, unit)
SELECT 1 + p %% %(gateways)s, 'point_' || n %% %(points)s, s, 'scheduled',
  s + interval '9.5 ms', random() * 1000, NULL, 'kWh'
FROM generate_series(0, %(rows)s - 1) n,
  LATERAL (SELECT n / %(points)s AS p) q,
  LATERAL (SELECT %(day)s::timestamptz + (p / %(gateways)s) * interval '1 second' AS s) t
"""


def measure(rows: int) -> dict[str, float]:
    """Bytes per row of readings and of poll_log, indexes included."""
    name = f"pollctl_disk_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = SERVER.rsplit("/", 1)[0] + f"/{name}"
    try:
        engine = make_engine(url)
        migrate.upgrade(engine)
        day = partitions.day_of(datetime.now(UTC)) + timedelta(days=1)
        engine.dispose()
        out = {}
        with psycopg.connect(url, autocommit=True) as conn:
            args = {"gateways": GATEWAYS, "rows": rows, "day": day, "points": 11}
            conn.execute(_GATEWAYS, args)
            for table, sql in (("readings", _READINGS), ("poll_log", _POLLS)):
                began = time.monotonic()
                conn.execute(sql, args)
                conn.execute(f"VACUUM ANALYZE {table}")
                sizes = conn.execute(
                    "SELECT sum(pg_total_relation_size(relid))::bigint, "
                    "sum(pg_indexes_size(relid))::bigint, (SELECT count(*) FROM "
                    f"{table}) FROM pg_partition_tree(%s) WHERE isleaf",
                    (table,),
                ).fetchone()
                assert sizes is not None
                size, indexes, count = sizes
                out[table] = size / count
                print(
                    f"{table}: {count:,} rows, {size / 2**20:,.1f} MiB with indexes, "
                    f"{size / count:.0f} bytes per row ({(size - indexes) / count:.0f} table, "
                    f"{indexes / count:.0f} indexes; written in {time.monotonic() - began:.1f} s)"
                )
        return out
    finally:
        with psycopg.connect(SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--polls", type=float, default=1000, help="polls per second")
    parser.add_argument("--points", type=float, default=11, help="mean points per poll")
    args = parser.parse_args()
    per_row = measure(args.rows)
    polls_day = args.polls * 86_400
    day = {"poll_log": polls_day, "readings": polls_day * args.points}
    total_day = 0.0
    for table, rows in day.items():
        size = rows * per_row[table]
        total_day += size
        print(
            f"{table}: {rows / 1e6:,.0f} M rows a day = {size / 1e9:,.1f} GB a day, "
            f"{size * 365 / 1e12:,.1f} TB a year"
        )
    print(f"together: {total_day / 1e9:,.1f} GB a day, {total_day * 365 / 1e12:,.1f} TB a year")


if __name__ == "__main__":
    main()
