"""Flower as pollctl-flower.service runs it, against a running fleet, over HTTP: its login
guards the pages and the API alike, it lists the polling worker, reads the `polling`
queue's length where kombu keeps it (under the installation's broker prefix), and finds a
poll-batch task by a gateway's name."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack
from functools import partial

import pytest
from flower.utils.broker import Broker, Redis

from polling import service
from polling.gatewayfile import parse_gateways
from polling.keys import Keys
from polling.repository import import_gateways
from polling.settings import Settings
from tests.conftest import REDIS_URL
from tests.fleet import fleet
from tests.processes import Flower, Worker
from tests.test_e2e import wait_until
from workers.app import create_app
from workers.broker import queue_keys
from workers.queues import POLL_BATCH_TASK, POLLING
from workers.senders import send_canary, send_poll
from workers.transport import Transport

LOGIN = "ops:flower-test-pw"
POINTS = [{"name": "temp", "address": 0, "type": "float32"}]


def get(url: str, login: str | None = LOGIN) -> tuple[int, bytes, str]:
    """Status, body and the `WWW-Authenticate` header of a GET with basic auth."""
    request = urllib.request.Request(url)
    if login:
        request.add_header("Authorization", f"Basic {base64.b64encode(login.encode()).decode()}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("WWW-Authenticate", "")


def get_json(url: str) -> dict:
    code, body, _ = get(url)
    assert code == 200, (url, code, body[:300])
    return json.loads(body)


def test_the_broker_url_stays_redis_and_flower_reads_our_prefixed_queues():
    # Flower chooses its broker client by the URL's scheme; kombu's keys carry our prefix.
    settings = Settings(redis_url=REDIS_URL, key_prefix=f"fl{uuid.uuid4().hex[:8]}")
    app = create_app(settings)
    with app.connection() as conn:
        assert conn.as_uri().startswith("redis://")
        assert isinstance(conn.transport, Transport)
        broker = Broker(
            conn.as_uri(include_password=True),
            broker_options=app.conf.broker_transport_options,
        )
    assert isinstance(broker, Redis)
    assert broker.broker_prefix == Keys(settings.key_prefix).broker


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_flower_wants_its_login_and_shows_workers_queue_lengths_and_poll_tasks(
    runtime, env, settings, simulate, free_ports, celery_app, redis_client, tmp_path
):
    ports = free_ports(3)
    document = fleet(ports[:2], [0.5, 1.0], POINTS)
    simulate(document)
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))

    with ExitStack() as stack:
        flower = Flower({**env, "FLOWER_BASIC_AUTH": LOGIN}, tmp_path / "flower.log", ports[2])
        stack.callback(flower.stop)
        flower.wait_ready()

        # Every page and API path wants the login (pages ask the browser for it). The API's
        # 401 is the login's, not its refusal to run without one (FLOWER_UNAUTHENTICATED_API).
        for path in ("/", "/broker", "/api/workers", "/api/queues/length"):
            code, body, challenge = get(f"{flower.url}{path}", login=None)
            assert code == 401 and b"FLOWER_UNAUTHENTICATED_API" not in body, (path, body)
            assert path.startswith("/api/") or challenge == 'Basic realm="flower"', path
            assert get(f"{flower.url}{path}", login="ops:wrong")[0] == 401, path
        assert get(f"{flower.url}/")[0] == 200

        worker = Worker(env, tmp_path / "worker.log", queues=POLLING)
        stack.callback(worker.stop)
        worker.wait_ready()
        service.start(runtime, partial(send_poll, celery_app))

        def listed() -> dict:
            return get_json(f"{flower.url}/api/workers?refresh=1").get(worker.hostname) or {}

        wait_until(lambda: "active_queues" in listed(), 10, "the worker in Flower's list")
        assert [q["name"] for q in listed()["active_queues"]] == [POLLING]

        # Flower turns the workers' task events on every 5 s; then each batch shows the
        # gateways and slots it carries, and the search finds them by name.
        def found(name: str) -> list[dict]:
            tasks = get_json(f"{flower.url}/api/tasks?search={name}&limit=20")
            return [t for t in tasks.values() if t["name"] == POLL_BATCH_TASK]

        wait_until(lambda: bool(found("gw1")), 20, "a poll batch of gw1 in Flower")
        assert all(re.search(r"\bgw1 \d\d:\d\d:\d\d\.\d{3}\b", t["args"]) for t in found("gw1"))
        assert get_json(f"{flower.url}/api/tasks?search=no-such-gateway") == {}

        # Without its worker the queue holds the chains' next steps (a warm shutdown hands
        # back what it held) and three canaries: Flower reads the same lengths as Redis.
        worker.stop()
        for _ in range(3):
            send_canary(celery_app, uuid.uuid4().hex, ttl=300)
        keys = queue_keys(POLLING, Keys(settings.key_prefix).broker)
        held = sum(redis_client.llen(key) for key in keys)
        lengths = get_json(f"{flower.url}/api/queues/length")["active_queues"]
        assert {"name": POLLING, "messages": held} in lengths
        assert held >= 3 + 1, held
        code, page, _ = get(f"{flower.url}/broker")
        assert code == 200 and b"polling" in page

    assert "not supported" not in flower.output()
