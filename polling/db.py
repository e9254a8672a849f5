"""Engines and sessions for SQLite and PostgreSQL, and the conflict-ignoring insert."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .errors import ServiceUnavailable
from .settings import mask_url


def normalize_url(url: str) -> str:
    """Let operators write `postgresql://`; we always talk psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A bounded connect, so a database that went away fails a poll's write in seconds
    # (and the record goes to the buffer) instead of hanging it.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        connect_args={"connect_timeout": 5},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the CLI read while a worker writes; busy_timeout queues concurrent writers.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def check_database(engine: Engine) -> None:
    """Raise ServiceUnavailable, naming the URL, when the database does not answer."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        url = mask_url(engine.url.render_as_string(hide_password=False))
        raise ServiceUnavailable(f"database {url} is unreachable: {reason}") from None


def is_unreachable(exc: DBAPIError) -> bool:
    """Whether a database error means the database is down (as opposed to a bad statement
    or a constraint): the caller buffers or retries instead of failing."""
    return isinstance(exc, OperationalError) or exc.connection_invalidated


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def insert_ignoring_conflicts(session: Session, table: Any, rows: Sequence[dict]) -> int:
    """Insert `rows`, silently skipping any that hit a unique constraint: the database
    is the last guard against a slot recorded twice. Returns the rows inserted."""
    return len(inserted(session, table, rows, ("id",)))


def inserted(session: Session, table: Any, rows: Sequence[dict], columns: Sequence[str]) -> list:
    """Insert `rows` ignoring conflicts; returns `columns` of the rows that went in."""
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    # One statement for every row list: SQLAlchemy's "insertmanyvalues" batches the rows
    # into multi-row INSERTs from a compiled form it caches, where `.values(rows)` would be
    # compiled afresh for every call (most of a poll's CPU).
    returning = [table.c[name] for name in columns]
    stmt = module.insert(table).on_conflict_do_nothing().returning(*returning)
    return list(session.execute(stmt, list(rows)).all())
