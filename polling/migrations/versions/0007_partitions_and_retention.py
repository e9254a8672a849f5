"""readings and poll log partitioned by day on PostgreSQL; readings indexed by time

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 07:30:00

PostgreSQL: each table is renamed `<table>_legacy`, a partitioned table takes its name
(the same columns, sequence, unique keys, indexes and foreign key; the primary key becomes
(id, slot_at), as a partitioned table's keys must hold its partition key) and the old table
is attached whole as the partition of every slot before tomorrow (UTC), so no row is copied:
the attach builds the new (id, slot_at) key and checks the bound, one pass over the table.
Retention deletes from it in batches and drops it once all of it is past its period. Then
DEFAULT and a partition per day from tomorrow on. SQLite: only the index on readings' time.
"""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import op
from sqlalchemy import text

from polling import partitions

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: Per table: its indexes other than the keys (name, columns), and the unique key.
INDEXES = {
    "readings": [
        ("ix_readings_gateway_point_slot", "gateway_id, point, slot_at"),
        ("ix_readings_slot", "slot_at"),
    ],
    "poll_log": [
        ("ix_poll_log_gateway_slot", "gateway_id, slot_at"),
        ("ix_poll_log_slot", "slot_at"),
    ],
}
UNIQUE = {
    "readings": ("uq_readings_slot", "gateway_id, point, kind, slot_at"),
    "poll_log": ("uq_poll_log_slot", "gateway_id, kind, slot_at"),
}


def upgrade() -> None:
    # Cleanup and `pollctl readings --since` read readings by time: nothing served that.
    op.create_index("ix_readings_slot", "readings", ["slot_at"])
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    now = datetime.now(UTC)
    for table in partitions.PARTITIONED:
        _partition(table, partitions.day_of(now) + partitions.DAY)
    # DEFAULT, and the days ahead the legacy partition does not take (today's rows go on
    # into it; a table that was empty gets today's partition too).
    partitions.ensure(conn, now=now)


def _partition(table: str, legacy_until: datetime) -> None:
    legacy = f"{table}_legacy"
    unique, unique_columns = UNIQUE[table]
    op.execute(f"ALTER TABLE {table} RENAME TO {legacy}")
    op.execute(f"ALTER TABLE {legacy} RENAME CONSTRAINT {unique} TO {legacy}_uq_slot")
    op.execute(f"ALTER TABLE {legacy} RENAME CONSTRAINT {table}_gateway_id_fkey TO {legacy}_fk")
    for name, _ in INDEXES[table]:
        op.execute(f"ALTER INDEX {name} RENAME TO {legacy}_{name.removeprefix('ix_')}")
    # Its (id) key gives way to the (id, slot_at) key the attach builds.
    op.execute(f"ALTER TABLE {legacy} DROP CONSTRAINT {table}_pkey")
    op.execute(
        f"CREATE TABLE {table} (LIKE {legacy} INCLUDING DEFAULTS) PARTITION BY RANGE (slot_at)"
    )
    _keys(table, unique, unique_columns)
    op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
    conn = op.get_bind()
    if conn.execute(text(f"SELECT 1 FROM {legacy} LIMIT 1")).first() is None:
        op.execute(f"DROP TABLE {legacy}")
        return
    op.execute(
        f"ALTER TABLE {table} ATTACH PARTITION {legacy} "
        f"FOR VALUES FROM (MINVALUE) TO ({partitions.literal(legacy_until)})"
    )


def _keys(table: str, unique: str, unique_columns: str) -> None:
    """The keys, indexes and foreign key of the table as 0005 left it, on `table`."""
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id, slot_at)")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {unique} UNIQUE ({unique_columns})")
    for name, columns in INDEXES[table]:
        op.execute(f"CREATE INDEX {name} ON {table} ({columns})")
    op.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT {table}_gateway_id_fkey FOREIGN KEY (gateway_id) "
        "REFERENCES gateways (id) ON DELETE CASCADE"
    )


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        for table in partitions.PARTITIONED:
            _unpartition(table)
    op.drop_index("ix_readings_slot", "readings")


def _unpartition(table: str) -> None:
    """Every row copied back into a plain table of the old shape."""
    plain = f"{table}_plain"
    unique, unique_columns = UNIQUE[table]
    op.execute(f"CREATE TABLE {plain} (LIKE {table} INCLUDING DEFAULTS)")
    op.execute(f"INSERT INTO {plain} SELECT * FROM {table}")
    op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {plain}.id")
    op.execute(f"DROP TABLE {table}")
    op.execute(f"ALTER TABLE {plain} RENAME TO {table}")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id)")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {unique} UNIQUE ({unique_columns})")
    for name, columns in INDEXES[table]:
        op.execute(f"CREATE INDEX {name} ON {table} ({columns})")
    op.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT {table}_gateway_id_fkey FOREIGN KEY (gateway_id) "
        "REFERENCES gateways (id) ON DELETE CASCADE"
    )
