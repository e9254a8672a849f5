"""Real `celery worker` and `celery beat` processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from polling.settings import Settings
from workers.app import create_app

ROOT = Path(__file__).resolve().parent.parent


class ChildProcess:
    """`python -c CODE ARGS` from the project's root, its output in `log`; stopped by PID."""

    def __init__(self, code: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._handle = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=self._handle,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, no acknowledgements, as when a host dies."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._handle.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class CeleryProcess(ChildProcess):
    def __init__(self, args: list[str], env: dict[str, str], log: Path, preamble: str = "") -> None:
        """`preamble`: Python run in the process before Celery starts (see tests/faketime)."""
        start = f"{preamble}from celery.__main__ import main\nmain()\n"
        super().__init__(start, ["-A", "workers.app", *args], env, log)


class Worker(CeleryProcess):
    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        concurrency: int = 8,
        preamble: str = "",
        queues: str = "polling,scheduling,default",
        hostname: str | None = None,
        loglevel: str = "INFO",
    ) -> None:
        self.hostname = hostname or f"e2e-{uuid.uuid4().hex[:8]}@localhost"
        self.settings = Settings.from_env({**os.environ, **env})
        super().__init__(
            [
                "worker",
                "-Q",
                queues,
                "--pool",
                "threads",
                "--concurrency",
                str(concurrency),
                "-n",
                self.hostname,
                "--loglevel",
                loglevel,
                "--without-gossip",
                "--without-mingle",
            ],
            env,
            log,
            preamble,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the worker answers a ping over the broker: it is consuming."""
        app = create_app(self.settings)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.output()[-3000:]}")
            if app.control.ping(destination=[self.hostname], timeout=0.5):
                return
        raise TimeoutError(f"worker not ready in {timeout} s:\n{self.output()[-3000:]}")


class Beat(CeleryProcess):
    def __init__(self, env: dict[str, str], log: Path, preamble: str = "") -> None:
        schedule = log.with_suffix(".schedule")
        args = ["beat", "--loglevel", "INFO", "-s", str(schedule)]
        super().__init__(args, env, log, preamble)


class Flower(CeleryProcess):
    """`celery -A workers.app flower` on a loopback port, as pollctl-flower.service runs it
    (its login, if any, from `FLOWER_BASIC_AUTH` in `env`)."""

    def __init__(self, env: dict[str, str], log: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(["flower", f"--port={port}", "--address=127.0.0.1"], env, log)

    def wait_ready(self, timeout: float = 30) -> None:
        """Until `/healthcheck` (the one page without a login) answers."""
        wait_http(f"{self.url}/healthcheck", self.proc, self.log, timeout)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until `url` answers 200, or `proc` exits (with its log in the error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} not answering in {timeout} s")


class ApiProcess(ChildProcess):
    """`pollctl api` on a loopback port, as an operator's unit runs it."""

    def __init__(self, env: dict[str, str], log: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        super().__init__("from cli import main; main()", ["api", "--port", str(port)], env, log)

    def wait_ready(self, timeout: float = 30) -> None:
        """Until `/health` answers."""
        wait_http(f"{self.url}/health", self.proc, self.log, timeout)
