"""systemd's watchdog (workers/watchdog.py): a worker feeds it only while it provably
consumes its queues. The rules are a table over `judge`; then a real `celery worker -Q
polling` with NOTIFY_SOCKET pointing at a datagram socket this test reads, as systemd's
would: READY=1, WATCHDOG=1 while it consumes, none once its polling consumer is cancelled
or its event loop blocks (its heartbeat going on), and again when it consumes again. A
worker whose clock is off stands aside from polling, and one whose broker went away
reconnects: both go on feeding it (a restart would fix neither)."""

from __future__ import annotations

import json
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from polling.keys import Keys
from polling.settings import Settings
from tests.conftest import REDIS_URL
from tests.faketime import SLEEP_SHIM, skewed
from tests.faults.harness import RedisServer
from tests.processes import Worker
from workers.app import create_app
from workers.consumption import Consumption, Evidence, LoopSample, Verdict, judge
from workers.queues import POLLING
from workers.senders import send_canary

POLL = frozenset({POLLING})
NONE: frozenset[str] = frozenset()
STALL = 1.0
GRACE = 35.0

#: A worker consuming polling, its loop ticking, its intake quiet and nothing waiting.
HEALTHY = Evidence(
    now=100.0,
    own=POLL,
    loop=LoopSample(at=99.8, consuming=POLL, since=50.0, room=True),
    received_at=99.0,
    aside=NONE,
    aside_since=0.0,
    backlog=None,
    broker_failed_at=None,
)


def loop(**changes: object) -> LoopSample:
    assert HEALTHY.loop is not None
    return replace(HEALTHY.loop, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "changes", "verdict"),
    [
        ("consuming", {}, Verdict.CONSUMING),
        ("loop stopped past the bound", {"loop": loop(at=98.5)}, Verdict.LOOP_STALLED),
        ("loop never ticked", {"loop": None}, Verdict.LOOP_STALLED),
        (
            "loop stopped, broker away 20 s ago: the consumer reconnects",
            {"loop": loop(at=90.0), "broker_failed_at": 80.0},
            Verdict.BROKER_AWAY,
        ),
        (
            "loop stopped, broker back for longer than a reconnect takes",
            {"loop": loop(at=90.0), "broker_failed_at": 60.0},
            Verdict.LOOP_STALLED,
        ),
        ("polling cancelled", {"loop": loop(consuming=NONE, since=95.0)}, Verdict.QUEUE_DROPPED),
        (
            "polling cancelled a moment ago: not settled yet",
            {"loop": loop(consuming=NONE, since=99.5)},
            Verdict.CONSUMING,
        ),
        (
            "polling set aside (clock off)",
            {"loop": loop(consuming=NONE, since=95.0), "aside": POLL, "aside_since": 95.0},
            Verdict.SET_ASIDE,
        ),
        (
            "clock back a moment ago, consumer not yet added",
            {"loop": loop(consuming=NONE, since=20.0), "aside_since": 99.5},
            Verdict.CONSUMING,
        ),
        (
            "clock back long ago, consumer never added",
            {"loop": loop(consuming=NONE, since=20.0), "aside_since": 90.0},
            Verdict.QUEUE_DROPPED,
        ),
        (
            "due messages wait, room, nothing taken",
            {"backlog": 5.0, "received_at": 90.0},
            Verdict.INTAKE_STALLED,
        ),
        (
            "the same, prefetch full",
            {"backlog": 5.0, "received_at": 90.0, "loop": loop(room=False)},
            Verdict.CONSUMING,
        ),
        (
            "the same, room unknown",
            {"backlog": 5.0, "received_at": 90.0, "loop": loop(room=None)},
            Verdict.CONSUMING,
        ),
        (
            "the same, a message just taken",
            {"backlog": 5.0, "received_at": 99.5},
            Verdict.CONSUMING,
        ),
        (
            "the same, consuming again only just",
            {"backlog": 5.0, "received_at": 10.0, "loop": loop(since=99.5)},
            Verdict.CONSUMING,
        ),
        ("a message due a moment ago", {"backlog": 0.5, "received_at": 10.0}, Verdict.CONSUMING),
        (
            "scheduling worker, default cancelled",
            {
                "own": frozenset({"scheduling", "default"}),
                "loop": loop(consuming=frozenset({"scheduling"}), since=90.0),
            },
            Verdict.QUEUE_DROPPED,
        ),
    ],
)
def test_judge(case: str, changes: dict, verdict: Verdict):
    assert judge(replace(HEALTHY, **changes), STALL, GRACE) is verdict, case


def test_only_consuming_or_a_cause_a_restart_cannot_fix_feeds_the_watchdog():
    alive = {v for v in Verdict if v.alive}
    assert alive == {Verdict.CONSUMING, Verdict.SET_ASIDE, Verdict.BROKER_AWAY}


def test_a_sample_keeps_since_while_the_loop_runs_on_the_same_queues():
    now = [10.0]
    consumption = Consumption(tick=0.25, stall=STALL, clock=lambda: now[0])
    consumption.sample(POLL, True)
    for t, consuming, since in [
        (10.5, POLL, 10.0),  # same queues, no gap
        (11.0, NONE, 11.0),  # polling cancelled
        (11.5, POLL, 11.5),  # added again
        (14.0, POLL, 14.0),  # after a stall of the loop: a fresh start
    ]:
        now[0] = t
        consumption.sample(consuming, True)
        assert consumption.loop == LoopSample(t, consuming, since, True)


def test_without_notify_socket_a_worker_is_left_as_it_was(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    app = create_app(Settings(redis_url=REDIS_URL, key_prefix="t-watchdog"))
    assert not any("LoopSampler" in getattr(s, "name", str(s)) for s in app.steps["consumer"])


DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.mark.parametrize("unit", ["pollctl-worker@.service", "pollctl-scheduler.service"])
def test_worker_units_are_watched_by_systemd(unit: str):
    """Ready on READY=1, restarted when unfed for WatchdogSec; only the main process (the
    `celery worker` systemd started, where the watchdog's thread runs) is listened to.
    tests/test_deploy.py verifies and scores the units."""
    settings = dict(
        line.split("=", 1)
        for line in (DEPLOY / unit).read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert float(settings["WatchdogSec"]) >= 10  # half of it: the longest pause of a loop
    assert settings["Restart"] == "always"


# A real worker under a stand-in for systemd.

#: WatchdogSec=2: the worker judges every 0.5 s and starves the watchdog once evidence
#: is missing for 1 s.
WATCHDOG_USEC = 2_000_000
#: Longer than WatchdogSec: systemd would have restarted a worker this long unfed.
UNFED = 3.0
#: A remote control command run on the worker's event loop that blocks it, as a hung call
#: would: the heartbeat's thread goes on.
BLOCK_LOOP = (
    "import time\n"
    "from celery.worker.control import control_command\n"
    "@control_command(args=[('seconds', float)], signature='<seconds>')\n"
    "def test_block_loop(state, seconds):\n"
    "    time.sleep(seconds)\n"
)


class Notifications:
    """The test's end of NOTIFY_SOCKET, where systemd would read sd_notify's datagrams."""

    def __init__(self) -> None:
        # A short directory of its own: AF_UNIX paths end at 107 bytes.
        self._dir = tempfile.TemporaryDirectory(prefix="wd")
        self.path = str(Path(self._dir.name) / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.seen: list[str] = []

    def close(self) -> None:
        self.sock.close()
        self._dir.cleanup()

    def _next(self, deadline: float) -> str | None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        self.sock.settimeout(left)
        try:
            line = self.sock.recv(4096).decode().strip()
        except TimeoutError:
            return None
        self.seen.append(line)
        return line

    def wait_for(self, prefix: str, timeout: float, count: int = 1) -> str:
        """The `count`-th datagram starting with `prefix` within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (line := self._next(deadline)) is not None:
            if line.startswith(prefix):
                count -= 1
                if count == 0:
                    return line
        raise AssertionError(f"no {prefix!r} in {timeout} s; the last seen: {self.seen[-8:]}")

    def assert_none(self, prefix: str, seconds: float) -> None:
        """No datagram starting with `prefix` for `seconds`."""
        deadline = time.monotonic() + seconds
        while (line := self._next(deadline)) is not None:
            assert not line.startswith(prefix), f"{line!r} while it should starve"


@pytest.fixture
def notify() -> Iterator[Notifications]:
    listener = Notifications()
    yield listener
    listener.close()


@pytest.fixture
def start_worker(tmp_path: Path, notify: Notifications, redis_client: redis.Redis):
    """Start `celery worker -Q polling` as systemd would run it (NOTIFY_SOCKET, WATCHDOG_USEC);
    every worker started is stopped by its PID, and its keys removed."""
    prefix = f"wd{uuid.uuid4().hex[:10]}"
    started: list[Worker] = []

    def start(preamble: str = "", **env: str) -> Worker:
        env = {
            "POLLING_REDIS_URL": REDIS_URL,
            "POLLING_KEY_PREFIX": prefix,
            "POLLING_DATABASE_URL": f"sqlite:///{tmp_path / 'pollctl.db'}",
            "NOTIFY_SOCKET": notify.path,
            "WATCHDOG_USEC": str(WATCHDOG_USEC),
            **env,
        }
        log = tmp_path / f"worker{len(started)}.log"
        worker = Worker(env, log, concurrency=4, preamble=preamble, queues=POLLING)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
    for key in redis_client.scan_iter(match=f"{prefix}:*"):
        redis_client.delete(key)


def canary_answers(worker: Worker, client: redis.Redis, timeout: float) -> bool:
    """Whether a canary sent on `polling` is run within `timeout` s: the worker consumes."""
    nonce = uuid.uuid4().hex
    send_canary(create_app(worker.settings), nonce, timeout)
    return client.blpop([Keys(worker.settings.key_prefix).canary(nonce)], timeout) is not None


def heartbeat_seen(worker: Worker, client: redis.Redis) -> int:
    raw = client.get(Keys(worker.settings.key_prefix).worker(worker.hostname))
    assert raw is not None, "the worker's heartbeat is gone"
    return int(json.loads(raw)["seen_ms"])


@pytest.mark.e2e
@pytest.mark.slow
def test_the_watchdog_is_fed_only_while_the_worker_consumes_polling(
    start_worker, notify: Notifications, redis_client: redis.Redis
):
    worker = start_worker(preamble=BLOCK_LOOP)
    app = create_app(worker.settings)
    notify.wait_for("READY=1", 30)
    notify.wait_for("STATUS=consuming polling", 5)
    notify.wait_for("WATCHDOG=1", 3, count=4)
    assert canary_answers(worker, redis_client, 5)

    # Its polling consumer cancelled: the process and its heartbeat live on, nothing polls.
    replies = app.control.cancel_consumer(POLLING, destination=[worker.hostname], reply=True)
    assert replies, "the worker did not answer the cancel"
    notify.wait_for("STATUS=not consuming polling", 5)
    notify.assert_none("WATCHDOG=1", UNFED)
    assert not canary_answers(worker, redis_client, 1.5)
    assert worker.proc.poll() is None

    app.control.add_consumer(POLLING, destination=[worker.hostname], reply=True)
    notify.wait_for("STATUS=consuming polling", 5)
    notify.wait_for("WATCHDOG=1", 3, count=2)

    # Its event loop blocked for 10 s by a call on it: the heartbeat's thread goes on.
    seen = heartbeat_seen(worker, redis_client)
    blocked = time.monotonic()
    app.control.broadcast(
        "test_block_loop", arguments={"seconds": 10}, destination=[worker.hostname]
    )
    notify.wait_for("STATUS=event loop stalled", 5)
    notify.assert_none("WATCHDOG=1", UNFED)
    deadline = blocked + 9
    while heartbeat_seen(worker, redis_client) == seen:
        assert time.monotonic() < deadline, "no heartbeat while the loop was blocked"
        time.sleep(0.2)
    assert time.monotonic() - blocked < 10, "the heartbeat came only once the loop ran again"

    notify.wait_for("STATUS=consuming polling", 15)
    notify.wait_for("WATCHDOG=1", 3, count=2)
    assert canary_answers(worker, redis_client, 5)


@pytest.mark.e2e
@pytest.mark.long
def test_a_worker_whose_clock_is_off_stands_aside_and_is_not_restarted(
    start_worker, notify: Notifications, redis_client: redis.Redis
):
    worker = start_worker(preamble=SLEEP_SHIM, **skewed("+30s"))
    notify.wait_for("READY=1", 30)
    notify.wait_for("STATUS=standing aside from polling", 10)
    notify.wait_for("WATCHDOG=1", 4, count=6)  # fed for 3 s: longer than WatchdogSec
    assert not canary_answers(worker, redis_client, 1.5)
    assert "not polling: this host's clock is 30." in worker.output()


@pytest.fixture
def private_broker(free_ports, tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, to take away (listed before `start_worker`, it outlives
    the worker)."""
    broker = RedisServer(free_ports(1)[0], tmp_path / "redis").start()
    yield broker
    broker.stop()


@pytest.mark.e2e
@pytest.mark.long
def test_a_worker_whose_broker_went_away_is_not_restarted(
    private_broker: RedisServer, start_worker, notify: Notifications
):
    worker = start_worker(POLLING_REDIS_URL=private_broker.url)
    notify.wait_for("READY=1", 30)
    notify.wait_for("STATUS=consuming polling", 5)

    private_broker.kill()  # its consumer reconnects: its loop stops; a restart would not help
    notify.wait_for("STATUS=reconnecting to the broker", 10)
    notify.wait_for("WATCHDOG=1", 4, count=6)  # fed for 3 s: longer than WatchdogSec

    private_broker.start()
    notify.wait_for("STATUS=consuming polling", 30)
    notify.wait_for("WATCHDOG=1", 3, count=2)
    assert worker.proc.poll() is None
