"""Run the three setups on one simulated fleet and measure each over the same window."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg
import redis
import yaml

from polling.repository import load_gateways as stored_gateways
from polling.runtime import Runtime
from polling.settings import Settings

from . import analyze, procstats
from .fleet import fleet

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_SERVER = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
#: The Redis database a run flushes and uses: two runs at once on one server need two.
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "12"))


def device_ports(count: int, first: int = 12_000) -> list[int]:
    """`count` distinct free ports below Linux's ephemeral range (32768 up), so neither a
    repeat nor a client connection's port can collide with a simulated device."""
    ports: list[int] = []
    port = first
    while len(ports) < count:
        if port >= 32_768:
            raise RuntimeError(f"fewer than {count} free ports between {first} and 32767")
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                ports.append(port)
            except OSError:
                pass
        port += 1
    return ports


@dataclass(frozen=True)
class Plan:
    gateways: int
    interval: float
    seconds: float
    warmup: float
    latency_ms: float
    concurrency: int
    workdir: Path
    #: Polling worker processes for pollctl (the scale-out runs use 2).
    workers: int = 1
    #: Run pollctl's polling workers under py-spy (`--profile`): collapsed stacks of the
    #: whole run in `profile-NAME.txt`; their CPU figures then include py-spy's sampling.
    profile: bool = False
    #: CPUs the polling workers are pinned to (`taskset -c`), e.g. "1"; empty: unpinned.
    cpus: str = ""
    #: POLLING_LATE_LIMIT for pollctl (0: no shedding); None leaves the default.
    late_limit: float | None = None


#: Simulated devices per simulator process: each device holds a listening socket and the
#: poller's connection, so a process stays well inside its file limit.
DEVICES_PER_SIMULATOR = 2500


class Bench:
    """One fleet (simulator, database, Redis database) shared by the setups in turn."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.workdir = plan.workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        self.database = f"pollctl_bench_{uuid.uuid4().hex[:8]}"
        self.database_url = PG_SERVER.rsplit("/", 1)[0] + f"/{self.database}"
        self.redis_url = f"{REDIS_SERVER}/{REDIS_DB}"
        self.redis = redis.Redis.from_url(self.redis_url)
        self.fleet_file = self.workdir / "fleet.yaml"

    # -- processes ---------------------------------------------------------------------------

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None):
        log = (self.workdir / f"{name}.log").open("ab")
        full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        # py-spy writes its profile once the process it runs has exited: stop that first.
        profiled = self.plan.profile and proc.poll() is None
        for child in psutil.Process(proc.pid).children() if profiled else ():
            if child.name() != "py-spy":
                child.terminate()
                child.wait(30)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def pollctl(self, *args: str) -> None:
        env = {**os.environ, **self.env(), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-c", "from cli import main; main()", *args]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=600)
        if done.returncode:
            err = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"pollctl {' '.join(args)} failed ({done.returncode}): {err[0]}")

    def env(self) -> dict[str, str]:
        shedding = (
            {}
            if self.plan.late_limit is None
            else {"POLLING_LATE_LIMIT": str(self.plan.late_limit)}
        )
        return {
            **shedding,
            "POLLING_REDIS_URL": self.redis_url,
            "POLLING_DATABASE_URL": self.database_url,
            "POLLING_ENV_FILE": os.devnull,
            "POLLING_KEY_PREFIX": "bench",
            "BENCH_GATEWAYS": str(self.fleet_file),
            "BENCH_DATABASE_URL": self.database_url,
            "BENCH_BROKER": self.redis_url,
        }

    # -- the fleet ---------------------------------------------------------------------------

    @contextmanager
    def fleet(self) -> Iterator[None]:
        p = self.plan
        timeout = min(1.0, p.interval / 2)
        doc = fleet(device_ports(p.gateways), p.interval, timeout)
        self.fleet_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.redis.flushdb()
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        cli = [sys.executable, "-c", "from cli import main; main()"]
        self.simulators = []
        gateways = doc["gateways"]
        for n, first in enumerate(range(0, len(gateways), DEVICES_PER_SIMULATOR)):
            part = self.workdir / f"simulated-{n}.yaml"
            chunk = gateways[first : first + DEVICES_PER_SIMULATOR]
            part.write_text(yaml.safe_dump({"gateways": chunk}, sort_keys=False))
            args = [*cli, "simulate", "--config", str(part), "--latency-ms", str(p.latency_ms)]
            self.simulators.append((self.spawn(f"simulator-{n}", args), chunk[-1]["port"]))
        try:
            for sim, port in self.simulators:
                self._wait_for_port(port, sim)
            self.pollctl("db", "upgrade")
            self.pollctl("gateway", "import", str(self.fleet_file))
            yield
        finally:
            for proc in self.procs:
                self.stop(proc)
            if os.environ.get("BENCH_KEEP_DB"):  # to study its poll log afterwards
                print(f"kept database {self.database}")
            else:
                with psycopg.connect(PG_SERVER, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def _wait_for_port(self, port: int, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("the simulator exited; see its log in " + str(self.workdir))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("the simulator did not listen within 120 s")

    # -- one setup ---------------------------------------------------------------------------

    def measure(
        self,
        setup: str,
        start: Callable[[], dict[str, subprocess.Popen]],
        stop: Callable[[], None],
    ) -> tuple[dict[str, float], dict[str, float], datetime, datetime]:
        """Start a setup, let it warm up, sample CPU over the window, stop it."""
        procs = start()
        time.sleep(self.plan.warmup)
        pids = {name: proc.pid for name, proc in procs.items()}
        for n, (sim, _) in enumerate(self.simulators):
            pids[f"simulator-{n}" if n else "simulator"] = sim.pid
        before = procstats.sample(pids, self.redis)
        window_start = datetime.now(UTC)
        time.sleep(self.plan.seconds)  # the measured window
        window_end = datetime.now(UTC)
        after = procstats.sample(pids, self.redis)
        rss = {name: procstats.peak_rss_mb(pid) for name, pid in pids.items()}
        rss["redis"] = procstats.peak_rss_mb(procstats.redis_pid(self.redis))
        stop()
        for proc in procs.values():
            self.stop(proc)
        return procstats.delta(before, after), rss, window_start, window_end

    def gateways_by_id(self) -> dict:
        rt = Runtime.build(Settings(redis_url=self.redis_url, database_url=self.database_url))
        with rt.sessions() as session:
            stored = stored_gateways(session)
        rt.close()
        return {g.id: g.config for g in stored}

    def sessions(self):
        rt = Runtime.build(Settings(redis_url=self.redis_url, database_url=self.database_url))
        return rt.sessions

    # -- the three setups --------------------------------------------------------------------

    def celery(
        self, app: str, role: str, name: str, queues: str = "polling,scheduling,default"
    ) -> subprocess.Popen:
        base = [sys.executable, "-m", "celery", "-A", app]
        if role == "worker":
            args = [
                *base,
                "worker",
                "-Q",
                queues,
                "--pool",
                "threads",
                "--concurrency",
                str(self.plan.concurrency),
                "-n",
                f"{name}@bench",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                os.environ.get("BENCH_LOGLEVEL", "WARNING"),
            ]
            if app != "workers.app":
                args[args.index("-Q") + 1] = "celery"
            if self.plan.profile and name.startswith("pollctl-worker"):
                args = [*profiler(self.workdir / f"profile-{name}.txt"), "--", *args]
            if self.plan.cpus and name.startswith("pollctl-worker"):
                args = ["taskset", "-c", self.plan.cpus, *args]
        else:
            args = [
                *base,
                "beat",
                "-s",
                str(self.workdir / f"{name}.schedule"),
                "--loglevel",
                os.environ.get("BENCH_LOGLEVEL", "WARNING"),
            ]
        return self.spawn(name, args, self.env())

    def run_pollctl(self) -> analyze.Figures:
        def start() -> dict[str, subprocess.Popen]:
            # As deployed: polling workers on `polling` only, one worker for the rest.
            procs = {
                f"worker{n}" if n else "worker": self.celery(
                    "workers.app", "worker", f"pollctl-worker{n}", "polling"
                )
                for n in range(self.plan.workers)
            }
            procs["scheduler"] = self.celery(
                "workers.app", "worker", "pollctl-scheduler", "scheduling,default"
            )
            procs["beat"] = self.celery("workers.app", "beat", "pollctl-beat")
            time.sleep(3)  # the worker connects; chains wait in Redis meanwhile
            self.pollctl("start")
            return procs

        cpu, rss, a, b = self.measure("pollctl", start, lambda: self.pollctl("stop"))
        name = "pollctl" if self.plan.workers == 1 else f"pollctl x{self.plan.workers}"
        with self.sessions()() as session:
            figures = analyze.slotted(name, "scheduled", session, self.gateways_by_id(), a, b)
            analyze.first_round(figures, session, "scheduled")
        return _finish(figures, cpu, rss)

    def run_naive(self) -> analyze.Figures:
        def start() -> dict[str, subprocess.Popen]:
            self.redis.flushdb()
            return {
                "worker": self.celery("bench.naive", "worker", "naive-worker"),
                "beat": self.celery("bench.naive", "beat", "naive-beat"),
            }

        cpu, rss, a, b = self.measure("naive", start, lambda: None)
        with self.sessions()() as session:
            anchors = analyze.first_polls(session, "naive")
            figures = analyze.unslotted(
                "naive", "naive", session, self.gateways_by_id(), a, b, anchors
            )
        return _finish(figures, cpu, rss)

    def run_floor(self) -> analyze.Figures:
        until = time.time() + self.plan.warmup + self.plan.seconds + 2

        started: list[subprocess.Popen] = []

        def start() -> dict[str, subprocess.Popen]:
            args = [
                sys.executable,
                "-m",
                "bench.floor",
                str(self.fleet_file),
                self.database_url,
                str(until),
            ]
            started.append(self.spawn("floor", args))
            return {"floor": started[0]}

        def finish() -> None:
            started[0].wait(60)  # it stops by itself after its last flush

        cpu, rss, a, b = self.measure("floor", start, finish)
        with self.sessions()() as session:
            figures = analyze.slotted("floor", "floor", session, self.gateways_by_id(), a, b)
            analyze.first_round(figures, session, "floor")
        return _finish(figures, cpu, rss)


def profiler(out: Path) -> list[str]:
    """py-spy sampling a process it starts (attaching to a running one needs ptrace rights
    a container often lacks), 200 times a second, without pausing it, only the thread that
    holds the GIL: a worker is bound by its GIL, so these samples are where its CPU goes."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return [
        py_spy,
        "record",
        "--rate",
        "200",
        "--nonblocking",
        "--gil",
        "--format",
        "raw",
        "-o",
        str(out),
    ]


def _finish(figures: analyze.Figures, cpu: dict[str, float], rss: dict[str, float]):
    polls = max(1.0, figures.achieved * figures.seconds)
    figures.cpu_per_1000 = {k: round(v * 1000 / polls, 3) for k, v in cpu.items()}
    figures.cpu_total_per_1000 = round(
        sum(v for k, v in figures.cpu_per_1000.items() if not k.startswith("simulator")), 3
    )
    figures.peak_rss_mb = {k: round(v, 1) for k, v in rss.items()}
    return figures
