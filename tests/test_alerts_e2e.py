"""Alerts end to end: a real worker and beat poll a simulated device; the device stops, the
gateway goes offline and exactly one "gateway offline" notice reaches a local HTTP
receiver (not one per point); the API lists and acknowledges it; the device comes back and
the resolution arrives once."""

from __future__ import annotations

import json
import uuid
from functools import partial

import pytest
from sqlalchemy import func, select

from polling import service
from polling.gatewayfile import parse_gateways
from polling.models import DiagnosticRun, GatewayRow
from polling.repository import import_gateways
from polling.settings import Settings
from tests.conftest import REDIS_URL
from tests.processes import ApiProcess, Beat, Worker
from tests.receiver import Receiver
from tests.test_api import TOKEN, get
from tests.test_e2e import wait_until
from workers.senders import send_poll

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.long]

OFFLINE = "pollctl CRITICAL: gateway_offline meter"
RESOLVED = "pollctl RESOLVED: gateway_offline meter"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def settings(database_url: str, receiver: Receiver) -> Settings:
    """Diagnostics (and so the alert rules) every 2 s; offline after 6 intervals of 0.5 s;
    no auto-disable and no fleet failure-rate alert, so the gateway's is the only story."""
    return Settings(
        redis_url=REDIS_URL,
        database_url=database_url,
        key_prefix=f"t{uuid.uuid4().hex[:10]}",
        reconcile_seconds=1.0,
        overdue_grace=1.0,
        failure_threshold=1000,
        diagnostics_seconds=2.0,
        failure_rate_warning=1.0,
        failure_rate_critical=1.0,
        alert_offline_intervals=6,
        alert_urls=receiver.url,
        alert_timeout=3.0,
        api_token=TOKEN,
    )


@pytest.fixture
def processes(tmp_path):
    started = []

    def start(proc):
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def document(port: int) -> dict:
    limits = {"min": -1e12, "max": 1e12}  # judged on every run, never crossed
    return {
        "gateways": [
            {
                "name": "meter",
                "host": "127.0.0.1",
                "port": port,
                "interval": 0.5,
                "timeout": 0.3,
                "points": [
                    {"name": name, "address": address, "type": "uint16", **limits}
                    for name, address in (("a", 0), ("b", 1), ("c", 2))
                ],
            }
        ]
    }


def post_json(url: str, body: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_device_that_stops_is_one_offline_alert_and_one_resolution(
    runtime, env, simulate, free_ports, processes, celery_app, receiver, tmp_path
):
    api_port, device_port = free_ports(2)
    doc = document(device_port)
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(doc))
    device = simulate(doc)
    worker = processes(Worker(env, tmp_path / "worker.log"))
    processes(Beat(env, tmp_path / "beat.log"))
    api_env = {**env, "POLLING_API_TOKEN": TOKEN}  # settings_env masks it
    api = processes(ApiProcess(api_env, tmp_path / "api.log", api_port))
    worker.wait_ready()
    api.wait_ready()
    service.start(runtime, partial(send_poll, celery_app))
    wait_until(lambda: _last_ok(runtime) is not None, 30, "a first successful poll")

    device.stop()
    assert receiver.wait_for(1, timeout=30) == [OFFLINE]
    assert get(f"{api.url}/api/alerts?open=1", token=None)[0] == 401
    code, body = get(f"{api.url}/api/alerts?open=1")
    (alert,) = json.loads(body)["alerts"]
    assert (code, alert["rule"], alert["subject"]) == (200, "gateway_offline", "meter")
    assert alert["gateway"] == "meter"  # the page links the alert to its gateway by name
    code, acked = post_json(f"{api.url}/api/alerts/{alert['id']}/ack", {"note": "on site"})
    assert (code, acked["state"], acked["ack_note"]) == (200, "acked", "on site")
    assert post_json(f"{api.url}/api/alerts/999999/ack", {})[0] == 404

    simulate(doc)  # the device is back, on the same port
    assert receiver.wait_for(2, timeout=30) == [OFFLINE, RESOLVED]
    # Two more diagnostics runs judge the fleet: nothing else is sent.
    runs = _diagnostics_runs(runtime)
    wait_until(lambda: _diagnostics_runs(runtime) >= runs + 2, 20, "two more diagnostics runs")
    service.stop(runtime)
    assert receiver.titles() == [OFFLINE, RESOLVED]


def _last_ok(runtime):
    with runtime.sessions() as session:
        return session.scalar(select(GatewayRow.last_ok_at))


def _diagnostics_runs(runtime) -> int:
    with runtime.sessions() as session:
        query = select(func.count()).select_from(DiagnosticRun)
        return session.scalar(query.where(DiagnosticRun.checks.is_not(None))) or 0
