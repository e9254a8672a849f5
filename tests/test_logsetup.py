"""Log lines: JSON off a terminal, text on one, with the poll's context on each line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from polling import logsetup
from polling.modbus import ModbusPool


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in (*logsetup.PER_TASK_LOGGERS, *logsetup.QUIET_LIBRARIES):
        logging.getLogger(name).setLevel(logging.NOTSET)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_off_a_terminal_each_line_is_one_json_object_with_its_context(restore_logging):
    stream = io.StringIO()
    logsetup.configure(logging.INFO, "auto", stream)
    log = logging.getLogger("polling.pipeline")
    with logsetup.bound(task_id="task-1"):
        log.info("poll failed: %s", "timeout", extra={"gateway": "meter-1", "slot": "S"})
    log.debug("not at INFO")
    (line,) = lines(stream)
    data = json.loads(line)
    assert data["message"] == "poll failed: timeout"
    assert (data["level"], data["logger"]) == ("INFO", "polling.pipeline")
    assert (data["gateway"], data["slot"], data["task_id"]) == ("meter-1", "S", "task-1")
    assert data["time"].startswith("20")


def test_text_carries_the_context_as_pairs_and_keeps_a_traceback_below(restore_logging):
    stream = io.StringIO()
    logsetup.configure(logging.INFO, "text", stream)
    log = logging.getLogger("x")
    try:
        raise ValueError("boom")
    except ValueError:
        with logsetup.bound(gateway="meter-2", token="abc"):
            log.exception("unexpected error")
    first, *rest = lines(stream)
    assert first.endswith("x: unexpected error  gateway=meter-2 token=abc")
    assert rest[-1] == "ValueError: boom"


def test_lines_logged_on_the_modbus_loop_carry_the_callers_context(restore_logging):
    stream = io.StringIO()
    logsetup.configure(logging.INFO, "json", stream)

    async def on_the_loop() -> None:
        logging.getLogger("polling.pipeline").info("from the loop")

    pool = ModbusPool()
    try:
        with logsetup.bound(task_id="task-2"):
            pool.run(on_the_loop(), timeout=5)
    finally:
        pool.close()
    assert json.loads(lines(stream)[0])["task_id"] == "task-2"


def test_celerys_per_task_lines_are_quiet_at_info_and_shown_at_debug(restore_logging):
    logsetup.configure(logging.INFO, "text", io.StringIO())
    assert logging.getLogger("celery.app.trace").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("alembic.runtime.migration").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("pymodbus.logging").getEffectiveLevel() == logging.ERROR
    logsetup.configure(logging.DEBUG, "text", io.StringIO())
    assert logging.getLogger("celery.app.trace").getEffectiveLevel() == logging.DEBUG
