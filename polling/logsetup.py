"""Log lines for journald and for people, the same in the CLI, workers, beat and the API:
one JSON object per line when stderr is not a terminal (journald, files, pipes), readable
text on one. POLLING_LOG_FORMAT=json|text overrides the guess.

JSON comes from python-json-logger, a `logging.Formatter`: Celery, uvicorn, kombu and our
own modules all log through the standard library, so one formatter on the root handler
covers every line without changing a call site (structlog would need its stdlib bridge for
the same result).

Fields a line's context carries (`bound`, or `extra=` on the call) travel with it: the
gateway, slot and chain token of a poll, the task id of the batch it belongs to.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

FORMATS = ("auto", "json", "text")
#: Context fields, in the order text lines show them.
FIELDS = ("gateway", "slot", "token", "task_id", "task")
#: Celery's lines per task (received, succeeded): a batch writes its own line instead.
PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")
#: Libraries quieter than the rest, and their least level shown (below DEBUG everything
#: shows). pymodbus warns on every failed connect and retry ("Failed to connect ..."): our
#: own poll line says the same once, with the gateway. Alembic says "Context impl ..." at
#: INFO each time diagnostics read the schema's revision (every 30 s).
QUIET_LIBRARIES = {"pymodbus": logging.ERROR, "alembic": logging.WARNING}

# The default is never mutated (`bound` sets a new dict), so sharing it is safe.
_context: ContextVar[dict[str, object]] = ContextVar("pollctl_log_context", default={})  # noqa: B039


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """Every line logged inside (in this thread, and in coroutines it starts on the Modbus
    loop: `run_coroutine_threadsafe` carries the context along) gets `fields`."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """`time level logger: message  key=value ...`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = [f"{k}={getattr(record, k)}" for k in FIELDS if getattr(record, k, None)]
        if not pairs:
            return line
        first, newline, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{first}  {' '.join(pairs)}{newline}{rest}"


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s %(process)d",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
    )


def configure(
    level: int | str = logging.INFO, log_format: str = "auto", stream: TextIO | None = None
) -> None:
    """One handler on the root logger for the whole process (replacing any before it)."""
    stream = stream or sys.stderr
    as_json = log_format == "json" or (log_format == "auto" and not _is_terminal(stream))
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(json_formatter() if as_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    numeric = root.getEffectiveLevel()
    debugging = numeric < logging.INFO
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(numeric if debugging else max(numeric, logging.WARNING))
    for name, least in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(numeric if debugging else max(numeric, least))


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
