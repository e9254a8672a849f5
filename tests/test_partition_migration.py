"""Migration 0007 on a populated database of revision 0005 (SQLite and PostgreSQL): the
rows are kept, the unique keys still refuse a second record of a slot (and the poll path's
ON CONFLICT still applies), and the downgrade gives the plain tables back, rows and all."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import IntegrityError

from polling import migrate, partitions, records
from polling.db import make_engine, session_factory
from polling.models import GatewayRow, PollLog, Reading
from polling.outcome import Outcome, PollKind
from polling.records import PollEntry, PollRecord
from polling.schedule import dt_to_ms
from tests.conftest import PG_SERVER

ROWS = 500


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path) -> Iterator[Engine]:
    """A database of its own (the migration test drives its schema), at revision 0005."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
        migrate.upgrade(engine, "0005")
        yield engine
        engine.dispose()
        return
    name = f"pollctl_mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(PG_SERVER.rsplit("/", 1)[0] + f"/{name}")
    migrate.upgrade(engine, "0005")
    yield engine
    engine.dispose()
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def populate(engine: Engine) -> tuple[int, list[datetime]]:
    """ROWS slots, one a minute back from now: a poll-log row and a reading each."""
    now = datetime.now(UTC).replace(microsecond=0)
    slots = [now - timedelta(minutes=n) for n in range(ROWS)]
    with engine.begin() as conn:
        gateway_id = conn.execute(
            text(
                "INSERT INTO gateways (name, host, port, device_id, interval_s, timeout_s, "
                "enabled, polling, consecutive_failures, slot_conflicts, created_at, updated_at)"
                " VALUES ('old', '127.0.0.1', 502, 1, 60, 1, true, false, 0, 0, :t, :t) "
                "RETURNING id"
            ).bindparams(t=now.replace(tzinfo=None)),
        ).scalar_one()
        for table, extra in (("poll_log", ", 'ok'"), ("readings", ", 'p', :s")):
            columns = "gateway_id, kind, slot_at, " + (
                "outcome" if table == "poll_log" else "point, read_at"
            )
            conn.execute(
                text(f"INSERT INTO {table} ({columns}) VALUES (:g, 'scheduled', :s{extra})"),
                [
                    {"g": gateway_id, "s": s if engine.dialect.name == "postgresql" else _naive(s)}
                    for s in slots
                ],
            )
    return gateway_id, slots


def _naive(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def content(engine: Engine) -> tuple[list, list]:
    with session_factory(engine)() as session:
        polls = list(session.execute(select(PollLog.id, PollLog.slot_at).order_by(PollLog.id)))
        readings = list(session.execute(select(Reading.id, Reading.slot_at).order_by(Reading.id)))
    return polls, readings


def relkind(engine: Engine, table: str) -> str:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT relkind FROM pg_class WHERE relname = :t"), {"t": table}
        ).scalar_one()


def check_keys(engine: Engine, gateway_id: int, slot: datetime) -> None:
    """A second row for a recorded slot is refused; the poll path's insert skips it (and
    counts it: the key was the last guard) and records a new slot with its readings."""
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            insert(PollLog),
            [dict(gateway_id=gateway_id, slot_at=slot, kind="scheduled", outcome="ok")],
        )
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            insert(Reading),
            [dict(gateway_id=gateway_id, point="p", slot_at=slot, kind="scheduled", read_at=slot)],
        )
    new_slot = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    polls = [
        PollEntry(
            PollRecord(gateway_id, dt_to_ms(at), PollKind.SCHEDULED, Outcome.OK, at, at),
            [
                dict(
                    gateway_id=gateway_id,
                    point="p",
                    slot_at=at,
                    kind="scheduled",
                    read_at=at,
                    value=1.0,
                    text=None,
                    unit=None,
                )
            ],
        )
        for at in (slot, new_slot)
    ]
    before = content(engine)
    with session_factory(engine)() as session, session.begin():
        records.record_polls(session, polls, failure_threshold=5)
    polls_after, readings_after = content(engine)
    assert len(polls_after) == len(before[0]) + 1 and len(readings_after) == len(before[1]) + 1
    assert polls_after[-1][1] == new_slot and readings_after[-1][1] == new_slot
    with session_factory(engine)() as session:
        assert session.scalar(select(GatewayRow.slot_conflicts)) == 1


def test_0007_converts_a_populated_database_and_downgrades(engine):
    gateway_id, slots = populate(engine)
    before = content(engine)
    assert len(before[0]) == len(before[1]) == ROWS

    migrate.upgrade(engine)
    assert content(engine) == before
    if engine.dialect.name == "postgresql":
        assert relkind(engine, "readings") == relkind(engine, "poll_log") == "p"
        with engine.connect() as conn:
            names = [p.name for p in partitions.partitions(conn, "readings")]
            conn.execute(text("SET enable_seqscan = off"))  # a table this small: prove the index
            plan = (
                conn.execute(
                    text("EXPLAIN SELECT id FROM readings WHERE slot_at < now() - interval '1 day'")
                )
                .scalars()
                .all()
            )
        today = partitions.day_of(datetime.now(UTC))
        assert names[0] == "readings_legacy" and names[-1] == "readings_default"
        assert partitions.partition_name("readings", today + 3 * partitions.DAY) in names
        assert any("readings_legacy_readings_slot" in line for line in plan), plan
    check_keys(engine, gateway_id, slots[0])
    migrated = content(engine)

    migrate.downgrade(engine, "0005")
    assert migrate.current_revision(engine) == "0005"
    assert content(engine) == migrated
    if engine.dialect.name == "postgresql":
        assert relkind(engine, "readings") == relkind(engine, "poll_log") == "r"
        with engine.begin() as conn:  # the sequence survived the swap
            conn.execute(text("SELECT nextval('readings_id_seq')"))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            insert(PollLog),
            [dict(gateway_id=gateway_id, slot_at=slots[0], kind="scheduled", outcome="ok")],
        )
    migrate.upgrade(engine)  # and up again, from the downgraded shape
    assert content(engine) == migrated
