"""What the microbenchmarks share: the figures of one, the processes it started, the table.

The microbenchmarks measure the parts pollctl is built from, each on its own: a raw pymodbus
exchange (`micro_modbus`), a bare Celery task and a bare self-rescheduling chain
(`micro_celery`). Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Micro:
    """The figures of one microbenchmark."""

    name: str
    #: Operations (reads, tasks) counted in the measured window.
    ops: int
    seconds: float
    rate: float
    #: CPU milliseconds per operation, by process ("client", "server", "worker", "redis",
    #: "enqueue": the enqueuing process).
    cpu_ms: dict[str, float] = field(default_factory=dict)
    #: p50, p95, p99 and max, for the chains.
    lateness_ms: dict[str, float] | None = None
    duplicates: int | None = None
    missed: int | None = None
    errors: int = 0


class Processes:
    """The processes a microbenchmark started; each is stopped by its own handle on exit,
    an error included."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._started: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `args` in the project root, its output appended to `name`.log."""
        with (self.logdir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                args,
                cwd=ROOT,
                env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        """SIGTERM (a Celery worker's warm shutdown), then SIGKILL after `timeout` s."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        for proc in reversed(self._started):
            self.stop(proc)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Return once 127.0.0.1:`port` accepts a connection; fail if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}; see its log")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on port {port} within {timeout:g} s")


def _cell(value: float | int | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


CPU_COLUMNS = ("client", "server", "enqueue", "worker", "redis")


def table(rows: list[Micro]) -> str:
    """One line per microbenchmark; CPU in ms per operation, lateness in ms."""
    head = (
        f"{'microbenchmark':24} {'ops':>6} {'rate/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'dup':>4} {'missed':>6} {'err':>4}  "
        + " ".join(f"{c:>7}" for c in CPU_COLUMNS)
        + "  (CPU ms per op)"
    )
    lines = [head]
    for m in rows:
        lat = m.lateness_ms or {}
        lines.append(
            f"{m.name:24} {m.ops:>6} {m.rate:>7.0f} {_cell(lat.get('p50'), '.1f', 7)} "
            f"{_cell(lat.get('p99'), '.1f', 7)} {_cell(lat.get('max'), '.1f', 7)} "
            f"{_cell(m.duplicates, 'd', 4)} {_cell(m.missed, 'd', 6)} {m.errors:>4}  "
            + " ".join(_cell(m.cpu_ms.get(c), ".3f", 7) for c in CPU_COLUMNS)
        )
    return "\n".join(lines)
