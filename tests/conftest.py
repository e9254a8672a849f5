"""Fixtures against the real things: a Redis database number and a PostgreSQL database of
this run's own, SQLite files, simulated devices on loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import text

from polling import migrate
from polling.gatewayfile import parse_gateways
from polling.runtime import Runtime
from polling.settings import Settings
from polling.simulator import Simulator

REDIS_SERVER = os.environ.get("POLLCTL_TEST_REDIS", "redis://127.0.0.1:6379")
PG_SERVER = os.environ.get("POLLCTL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CLAIM_KEY = "pollctl-test-run"


def _claim_redis_db() -> int:
    """An empty database number, claimed with a marker so parallel runs pick different ones;
    only that database is ever flushed."""
    for number in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_SERVER}/{number}")
        if client.dbsize() == 0 and client.set(CLAIM_KEY, os.getpid(), nx=True, ex=3600):
            return number
    raise RuntimeError(f"no empty Redis database on {REDIS_SERVER} for the tests")


REDIS_DB = _claim_redis_db()
REDIS_URL = f"{REDIS_SERVER}/{REDIS_DB}"
# Processes that build the app from the environment (`celery -A workers.app`) use ours.
os.environ["POLLING_REDIS_URL"] = REDIS_URL
os.environ.pop("POLLING_DATABASE_URL", None)
os.environ["POLLING_ENV_FILE"] = os.devnull


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'pollctl.db'}"
        return
    name = f"pollctl_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_SERVER.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings of one test: its own key prefix, fast reconcile and overdue detection."""
    return Settings(
        redis_url=REDIS_URL,
        database_url=database_url,
        key_prefix=f"t{uuid.uuid4().hex[:10]}",
        reconcile_seconds=1.0,
        overdue_grace=1.0,
        failure_threshold=3,
    )


@pytest.fixture
def celery_app(settings: Settings):
    """The Celery app of the test's settings: what `workers.senders` send through."""
    from workers.app import create_app

    return create_app(settings)


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as POLLING_* variables, for the CLI and subprocesses."""
    return {
        **settings.masked(),
        "POLLING_DATABASE_URL": settings.database_url,
        "POLLING_ALERT_URLS": settings.alert_urls,
    }


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return settings_env(settings)


@pytest.fixture
def runtime(settings: Settings, redis_client: redis.Redis) -> Iterator[Runtime]:
    rt = Runtime.build(settings)
    migrate.upgrade(rt.engine)
    _clean_tables(rt)
    yield rt
    for key in redis_client.scan_iter(match=f"{settings.key_prefix}:*"):
        redis_client.delete(key)
    _clean_tables(rt)
    rt.close()


def _clean_tables(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        for table in (
            "alerts", "readings", "poll_log", "points", "request_plans", "gateways",
            "diagnostic_runs", "writes",
        ):  # fmt: skip
            conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
def free_ports():
    from polling.demo import free_port

    return lambda n: [free_port() for _ in range(n)]


@pytest.fixture
def simulate():
    """Start a simulator for a gateways document; stopped (and checked for leftover
    threads) at teardown."""
    started: list[Simulator] = []
    before = set(threading.enumerate())

    def start(document: dict, **kwargs) -> Simulator:
        sim = Simulator(parse_gateways(document), **kwargs).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()
    leftover = [t for t in set(threading.enumerate()) - before if t.name == "modbus-simulator"]
    assert not leftover, f"simulator threads left running: {leftover}"


@pytest.fixture
def gateways_file(tmp_path: Path):
    import yaml

    def write(document: dict, name: str = "gateways.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    return write


@pytest.fixture
def processes(tmp_path):
    """Starts test processes (`tests/processes.py` classes) and stops them, by PID, after."""
    started = []

    def start(cls, env, name):
        proc = cls(env, tmp_path / f"{name}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def pty_pairs(tmp_path):
    """Makes pairs of linked ptys with socat (`make("bus")` -> the two ends' paths), each a
    serial line with one end for the server and one for the client; stopped after."""
    if shutil.which("socat") is None:  # .ci/run installs it
        pytest.fail("socat is not installed: apt-get install socat")
    procs: list[subprocess.Popen] = []

    def make(name: str) -> tuple[str, str]:
        a, b = tmp_path / f"{name}-a", tmp_path / f"{name}-b"
        proc = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        deadline = time.monotonic() + 10
        while not (a.exists() and b.exists()):  # socat makes the links once the ptys are up
            assert proc.poll() is None and time.monotonic() < deadline, "socat gave no ptys"
            time.sleep(0.01)
        return os.fspath(a), os.fspath(b)

    yield make
    for proc in procs:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def pty_pair(pty_pairs):
    """One serial line: the server on one end, the client on the other."""
    return pty_pairs("bus")
