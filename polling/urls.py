"""What a Redis or database URL must look like, checked when settings are read, so a wrong
one is one line naming the variable instead of a traceback from deep in a driver."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigError

REDIS_FORMS = "redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS) or unix:///PATH?db=N"
DATABASE_FORMS = "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB or sqlite:///PATH"
#: Database backends pollctl speaks (SQLAlchemy drivers: psycopg 3, and the stdlib's sqlite3).
BACKENDS = {"postgresql": ("", "psycopg"), "postgres": ("",), "sqlite": ("", "pysqlite")}


def check_redis_url(variable: str, url: str, shown: str) -> None:
    """`shown` is `url` with its password masked (for the message)."""

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"{variable}={shown}: {why} (expected {REDIS_FORMS})")

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise refuse(f"not a Redis URL: {exc}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise refuse(
            "not a Redis URL" if not parts.scheme else f"scheme {parts.scheme}:// is not Redis's"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise refuse("a unix socket URL needs the socket's path")
        db = parse_qs(parts.query).get("db", ["0"])[0]
    else:
        if not parts.hostname:
            raise refuse("no host")
        if port == 0:
            raise refuse("port 0")
        db = parts.path.lstrip("/") or "0"
    if not db.isdigit():
        raise refuse(f"database {db!r} is not a number")


def check_database_url(variable: str, url: str, shown: str) -> None:
    def refuse(why: str) -> ConfigError:
        return ConfigError(f"{variable}={shown}: {why} (expected {DATABASE_FORMS})")

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise refuse("not a database URL") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in BACKENDS:
        raise refuse(f"{backend} is not supported")
    if driver not in BACKENDS[backend]:
        raise refuse(f"driver {driver} is not supported ({backend} goes through psycopg 3)")
    if backend != "sqlite" and not parsed.database:
        raise refuse("no database name")
