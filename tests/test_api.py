"""`pollctl api` over real HTTP against a running fleet: every endpoint, the token, the
status codes of a critical and a healthy fleet, and `/metrics` parsed by prometheus-client
with its counts checked against the poll log."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from functools import partial

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from polling import service
from polling.gatewayfile import parse_gateways
from polling.models import GatewayRow, PollLog
from polling.repository import import_gateways
from tests.fleet import fleet
from tests.processes import ApiProcess, Beat, Worker
from tests.test_e2e import wait_until
from workers.senders import send_poll

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = "s3cret-token"
POINTS = [
    {"name": "temp", "address": 0, "type": "float32", "unit": "°C"},
    {"name": "status", "address": 13, "type": "uint16"},
]


def get(url: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(url: str) -> tuple[int, dict]:
    code, body = get(url)
    return code, json.loads(body)


def metrics(api: ApiProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, body = get(f"{api.url}/metrics")
    assert code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


@pytest.fixture
def started(tmp_path):
    procs: list = []

    def start(proc):
        procs.append(proc)
        return proc

    yield start
    for proc in reversed(procs):
        proc.stop()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_api_reports_a_critical_then_healthy_fleet_and_metrics_match_the_poll_log(
    runtime, env, simulate, free_ports, started, celery_app, tmp_path
):
    # Two devices answer; gw2's port has none, so its polls fail.
    ports = free_ports(3)
    document = fleet(ports, [0.5, 1.0, 1.0], POINTS)
    simulate({"gateways": document["gateways"][:2]})
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
    env = {
        **env,
        "POLLING_API_TOKEN": TOKEN,
        "POLLING_DIAGNOSTICS_SECONDS": "2",
        "POLLING_FAILURE_THRESHOLD": "1000",  # gw2 keeps failing, and keeps polling
    }
    api = started(ApiProcess(env, tmp_path / "api.log", free_ports(1)[0]))
    api.wait_ready()

    # Nothing runs yet: no diagnostics have been recorded, which is critical.
    assert get(f"{api.url}/health", token=None)[0] == 200
    assert get(f"{api.url}/api/polling/health", token=None)[0] == 401
    assert get(f"{api.url}/metrics", token="wrong")[0] == 401
    code, body = get_json(f"{api.url}/api/polling/health")
    assert (code, body["health"]) == (503, "critical"), body

    # As deployed: polling workers apart from the one that runs reconcile and diagnostics.
    worker = started(Worker(env, tmp_path / "worker.log", queues="polling"))
    scheduler = started(Worker(env, tmp_path / "scheduler.log", queues="scheduling,default"))
    started(Beat(env, tmp_path / "beat.log"))
    worker.wait_ready()
    scheduler.wait_ready()
    service.start(runtime, partial(send_poll, celery_app))

    def all_polled() -> bool:
        _, listed = get_json(f"{api.url}/api/polling/gateways")
        state = {g["name"]: g for g in listed["gateways"]}
        return bool(state["gw0"]["last_ok_at"] and state["gw1"]["last_ok_at"])

    wait_until(all_polled, 30, "ok polls of gw0 and gw1 seen by the API")
    wait_until(
        lambda: get(f"{api.url}/api/polling/health")[0] == 200, 30, "a run graded not critical"
    )
    _, health = get_json(f"{api.url}/api/polling/health")
    assert health["health"] in ("healthy", "degraded")
    assert {"redis", "database", "workers", "beat", "diagnostics"} <= set(health["components"])

    _, queues = get_json(f"{api.url}/api/polling/queue-status")
    polling = next(q for q in queues["queues"] if q["name"] == "polling")
    assert polling["consumers"] == 1
    assert queues["chains"]["live"] == 3
    assert sorted(w["name"] for w in queues["workers"]) == sorted(
        [worker.hostname, scheduler.hostname]
    )

    _, runs = get_json(f"{api.url}/api/polling/diagnostics?limit=5")
    assert any(run["kind"] == "diagnostics" for run in runs["runs"])

    code, gw0 = get_json(f"{api.url}/api/polling/gateways/gw0")
    assert code == 200 and gw0["polling"] == "yes" and gw0["success_rate"] == 1.0
    assert (gw0["colour"], gw0["breaker"], gw0["offline_s"]) == ("green", "closed", None)
    assert sorted(r["point"] for r in gw0["readings"]) == ["status", "temp"]
    # The status page's fields beside the status ones, which keep their meaning.
    assert gw0["colour"] in ("green", "yellow") and isinstance(gw0["missed"], int)
    assert [(p["name"], p["unit"]) for p in gw0["points"]] == [("temp", "°C"), ("status", None)]
    assert gw0["polls"][0]["outcome"] == "ok" and gw0["missed_slots"] == []
    _, page = get_json(f"{api.url}/api/polling/gateways?q=GW&offset=1&limit=1")
    assert ([g["name"] for g in page["gateways"]], page["total"]) == (["gw1"], 3)
    assert page["gateways"][0]["values"] and page["counts"]["grey"] == 0
    assert get(f"{api.url}/api/polling/gateways?colour=pink")[0] == 422
    code, html = get(f"{api.url}/", token=None)  # the page holds no data: no token
    assert code == 200 and b"/static/app.js" in html
    assert get(f"{api.url}/api/polling/gateways/nosuch")[0] == 404

    wait_until(
        lambda: get_json(f"{api.url}/api/polling/gateways/gw2")[1]["failed"] >= 2,
        30,
        "failed polls of the gateway without a device",
    )
    service.stop(runtime)  # nothing polls once it returns: the record is final
    # The worker's journal: one JSON object per line (not a terminal), one INFO line per
    # batch with its task id, the failing gateway named.
    lines = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    batches = [line for line in lines if line["message"].startswith("batch of ")]
    assert batches and all(line["task_id"] and line["level"] == "INFO" for line in batches)
    assert any("failed: gw2" in line["message"] for line in batches)
    with runtime.sessions() as session:
        names = dict(session.execute(select(GatewayRow.id, GatewayRow.name)).all())
        logged = Counter()
        for gateway_id, outcome, slots in session.execute(
            select(PollLog.gateway_id, PollLog.outcome, func.sum(PollLog.slots))
            .where(PollLog.kind == "scheduled")
            .group_by(PollLog.gateway_id, PollLog.outcome)
        ):
            logged[(names[gateway_id], outcome)] = int(slots)
        scheduled = select(func.count()).where(PollLog.kind == "scheduled")
        started = session.scalar(scheduled.where(PollLog.started_at.is_not(None)))
        finished = session.scalar(scheduled.where(PollLog.finished_at.is_not(None)))
    samples = metrics(api)
    counted = Counter(
        {
            (dict(labels)["gateway"], dict(labels)["outcome"]): int(value)
            for (name, labels), value in samples.items()
            if name == "pollctl_polls_total"
        }
    )
    assert counted == logged
    assert samples[("pollctl_poll_lateness_seconds_count", ())] == started
    assert samples[("pollctl_poll_duration_seconds_count", ())] == finished
    assert samples[("pollctl_gateways", (("site", "default"), ("state", "stopped")))] == 3
    assert samples[("pollctl_queue_consumers", (("queue", "polling"), ("site", "default")))] == 1
    assert samples[("pollctl_steps_dropped_total", (("guard", "claimed"),))] == 0
    assert samples[("pollctl_health", (("component", "redis"),))] == 0

    # The polling worker dies: once its heartbeat expires, diagnostics find nothing
    # consuming `polling`, and health is critical.
    worker.kill()
    wait_until(lambda: get(f"{api.url}/api/polling/health")[0] == 503, 40, "health critical (503)")
    _, health = get_json(f"{api.url}/api/polling/health")
    assert health["components"]["workers"]["health"] == "critical"


def test_api_starts_with_the_database_down_and_answers_503_naming_it(tmp_path, free_ports):
    from tests.conftest import REDIS_URL

    env = {
        "POLLING_REDIS_URL": REDIS_URL,
        "POLLING_DATABASE_URL": "postgresql://pollctl:pw@127.0.0.1:1/pollctl",
        "POLLING_KEY_PREFIX": f"api{time.time_ns()}",
    }
    api = ApiProcess(env, tmp_path / "api.log", free_ports(1)[0])
    try:
        api.wait_ready()
        code, body = get(f"{api.url}/api/polling/health", token=None)
        answer = json.loads(body)
        assert code == 503 and answer["health"] == "critical"
        assert answer["error"].startswith("database postgresql://pollctl:***@127.0.0.1:1/pollctl")
        assert get(f"{api.url}/metrics", token=None)[0] == 503
    finally:
        api.stop()


def test_a_gateway_whose_name_has_a_slash_has_its_page(runtime, env, tmp_path, free_ports):
    # The import takes any name, but the route's {name} stopped at the first "/": 404.
    document = {
        "gateways": [
            {"name": "hall/1", "host": "127.0.0.1", "port": 1, "interval": 5, "points": POINTS}
        ]
    }
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
    api = ApiProcess(env, tmp_path / "api.log", free_ports(1)[0])
    try:
        api.wait_ready()
        code, body = get(f"{api.url}/api/polling/gateways/hall%2F1", token=None)
        assert code == 200, body
        assert json.loads(body)["name"] == "hall/1"
    finally:
        api.stop()
