"""Two sites, two real `celery worker` processes with distinct hostnames, each serving one
site (one as deployed today, `-Q polling`; the other `POLLING_SITES=east`): each polls its
own site's gateways and no other, and killing the east worker makes site east, and only
site east, critical."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from polling import heartbeat, service
from polling.gatewayfile import parse_gateways
from polling.repository import import_gateways
from tests.fleet import fleet
from tests.processes import Worker
from workers.senders import send_poll

pytestmark = [pytest.mark.e2e]

POINTS = [{"name": "v", "address": 0}]
INTERVAL = 0.5
#: Slots each gateway must have been polled for, before the east worker dies.
POLLS_EACH = 6


def workers_polled(log: Path) -> dict[str, int]:
    """Gateway -> polls this worker ran, from its DEBUG lines (one per poll, JSON)."""
    counts: dict[str, int] = defaultdict(int)
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("message", "").startswith(("poll ok", "poll failed")):
            counts[entry["gateway"]] += 1
    return dict(counts)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout} s")
        time.sleep(0.1)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_each_site_is_polled_by_its_own_worker_and_dies_alone(
    runtime, env, simulate, free_ports, celery_app, tmp_path
):
    document = fleet(free_ports(4), [INTERVAL] * 4, POINTS)
    east = {"gw2", "gw3"}
    for gateway in document["gateways"]:
        if gateway["name"] in east:
            gateway["site"] = "east"
    sim = simulate(document)
    port_of = {g["name"]: g["port"] for g in document["gateways"]}
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))

    env = {**env, "POLLING_CANARY_TIMEOUT": "3", "POLLING_LOG_FORMAT": "json"}
    logs = {site: tmp_path / f"w-{site}.log" for site in ("default", "east")}
    default_worker = Worker(
        env, logs["default"], 4, queues="polling", hostname="w-default@localhost", loglevel="DEBUG"
    )
    east_worker = Worker(
        {**env, "POLLING_SITES": "east"},
        logs["east"],
        4,
        queues="polling",
        hostname="w-east@localhost",
        loglevel="DEBUG",
    )
    try:
        default_worker.wait_ready()
        east_worker.wait_ready()
        serving = heartbeat.serving(heartbeat.live_workers(runtime.redis, runtime.keys))
        assert serving == {"default": ["w-default@localhost"], "east": ["w-east@localhost"]}

        service.start(runtime, partial(send_poll, celery_app))

        def polled_enough() -> bool:
            ports = [port for _, port, _, _ in list(sim.traffic.reads)]
            return all(ports.count(port) >= POLLS_EACH for port in port_of.values())

        wait_until(polled_enough, 30, f"{POLLS_EACH} polls of every device")
        # The devices served every gateway; the workers' lines say who polled which.
        by_default, by_east = workers_polled(logs["default"]), workers_polled(logs["east"])
        assert set(by_default) == {"gw0", "gw1"}, by_default
        assert set(by_east) == east, by_east
        assert all(n >= POLLS_EACH - 1 for n in [*by_default.values(), *by_east.values()])

        east_worker.kill()  # SIGKILL by PID: its heartbeat lingers, its canary never returns
        result = CliRunner().invoke(main, ["validate", "--json"], env=env)
        assert result.exit_code == 2, result.output  # critical
        checks = {c["component"]: c for c in json.loads(result.output)["checks"]}
        assert checks["workers"]["status"] == "healthy", checks["workers"]
        assert "served by w-default@localhost" in checks["workers"]["message"]
        assert checks["workers:east"]["status"] == "error", checks["workers:east"]
        assert checks["workers:east"]["details"]["site"] == "east"

        # The default site goes on being polled, by its own worker alone.
        before = workers_polled(logs["default"])
        wait_until(
            lambda: all(workers_polled(logs["default"]).get(g, 0) > before[g] for g in before),
            10,
            "default site's next polls",
        )
        assert set(workers_polled(logs["default"])) == {"gw0", "gw1"}
    finally:
        service.stop(runtime)
        default_worker.stop()
        east_worker.stop()
