"""Fixtures of the fault suite; its summary table is printed at the end of the run and
written to `.pytest_cache/fault-summary.md`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from polling.demo import free_port
from tests.faults.harness import (
    SUMMARY,
    RedisServer,
    Rig,
    create_database,
    drop_database,
    summary_table,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def rig_factory(tmp_path: Path, redis_server: RedisServer):
    """Build the test's rig (settings may be overridden); everything is torn down after."""
    made: list[tuple[Rig, str]] = []

    def make(redis_url: str | None = None, pg_port: int | None = None, **settings: object) -> Rig:
        redis.Redis.from_url(redis_server.url).flushall()
        database = create_database()
        rig = Rig(tmp_path, redis_url or redis_server.url, database, pg_port, **settings)
        made.append((rig, database))
        return rig

    yield make
    for rig, database in made:
        rig.close()
        drop_database(database)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not SUMMARY:
        return
    table = summary_table(SUMMARY)
    terminalreporter.write_sep("=", "fault suite summary")
    terminalreporter.write_line(table)
    path = Path(config.rootpath) / ".pytest_cache" / "fault-summary.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text(table + "\n")
