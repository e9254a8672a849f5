"""The live feed without a fleet: what a saved batch publishes (real Redis), and `/ws` of a
real `pollctl api` relaying it: the token, subscribe, unsubscribe, heartbeats."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from polling.keys import Keys
from polling.live import LiveWatch, publish
from polling.outcome import Outcome, PollKind
from polling.records import MissedRun, PollEntry, PollRecord
from polling.schedule import dt_to_ms
from tests.processes import ApiProcess
from tests.test_e2e import wait_until
from webapi.live import Client

TOKEN = "live-s3cret"
SLOT = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
NAMES = {1: "gw0", 2: "gw1"}


def poll(gateway_id: int, outcome: Outcome = Outcome.OK) -> PollEntry:
    started = SLOT + timedelta(milliseconds=3)
    record = PollRecord(
        gateway_id,
        dt_to_ms(SLOT),
        PollKind.SCHEDULED,
        outcome,
        started,
        started + timedelta(milliseconds=12),
        None if outcome is Outcome.OK else "timeout",
    )
    reading = {"point": "temp", "value": 21.5, "text": None, "unit": "°C"}
    return PollEntry(record, [reading] if outcome is Outcome.OK else [])


def test_a_batch_publishes_only_to_channels_somebody_listens_on(redis_client):
    keys = Keys("live-pub")
    watch = LiveWatch()
    batch = [poll(1), poll(2, Outcome.FAILED), MissedRun(1, dt_to_ms(SLOT) - 1000, 3, 1000, "x")]
    assert publish(redis_client, keys, watch, batch, NAMES.get) == 0  # nobody listens

    listener = redis_client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(keys.live("gateways.gw0"), keys.live("global"))
    try:
        watch.checked_at -= 1  # past the cache's second, without waiting for it
        assert publish(redis_client, keys, watch, batch, NAMES.get) == 3
        got: list[dict] = []
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            # None for each subscription's confirmation, then the messages.
            if (message := listener.get_message(timeout=1)) is not None:
                got.append(message)
    finally:
        listener.close()
    by_channel: dict[str, list[dict]] = {}
    for message in got:
        by_channel.setdefault(message["channel"].decode(), []).append(json.loads(message["data"]))
    ok, missed = by_channel[keys.live("gateways.gw0")]
    assert ok == {
        "gateway": "gw0",
        "kind": "scheduled",
        "outcome": "ok",
        "slot": "2026-12-04T12:00:00.000Z",
        "duration_ms": 12,
        "lateness_ms": 3,
        "error": None,
        "readings": [{"point": "temp", "value": 21.5, "unit": "°C"}],
    }
    assert (missed["outcome"], missed["slots"]) == ("missed", 3)
    (summary,) = by_channel[keys.live("global")]
    # gw1 has no listener of its own, but the fleet summary names it.
    assert summary["outcomes"] == {"missed": 1, "failed": 1}
    assert summary["gateways"] == {"gw0": "missed", "gw1": "failed"}


def test_publishing_to_a_redis_that_is_down_is_counted_not_raised(free_ports):
    dead = redis.Redis(port=free_ports(1)[0], retry=Retry(NoBackoff(), 0))
    watch = LiveWatch()
    assert publish(dead, Keys("x"), watch, [poll(1)], NAMES.get) == 0
    assert watch.failures == 1


def test_a_full_client_queue_drops_new_frames_and_counts_them():
    import asyncio

    client = Client(asyncio.Queue(2))
    for n in range(5):
        client.offer(str(n))
    assert (client.queue.qsize(), client.dropped) == (2, 3)
    assert client.queue.get_nowait() == "0"


# -- /ws of a real API --------------------------------------------------------------------


def frames(ws: ClientConnection, skip_heartbeats: bool = True):
    while True:
        frame = json.loads(ws.recv(timeout=10))
        if not (skip_heartbeats and frame.get("op") == "heartbeat"):
            yield frame


def subscribers(client: redis.Redis, channel: str) -> int:
    return dict(client.pubsub_numsub(channel)).get(channel.encode(), 0)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_ws_relays_subscribed_topics_with_heartbeats_and_refuses_a_bad_token(
    env, settings, redis_client, free_ports, tmp_path
):
    env = {**env, "POLLING_API_TOKEN": TOKEN, "POLLING_LIVE_HEARTBEAT": "0.5"}
    api = ApiProcess(env, tmp_path / "api.log", free_ports(1)[0])
    keys = Keys(settings.key_prefix)
    url = api.url.replace("http", "ws") + "/ws"
    try:
        api.wait_ready()
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(InvalidStatus) as refused:
                connect(url, additional_headers=headers, open_timeout=5)
            assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus):
            connect(url, subprotocols=["pollctl", "bearer.wrong"], open_timeout=5)  # type: ignore[list-item]
        with connect(f"{url}?token={TOKEN}", open_timeout=5):
            pass  # the query parameter is accepted too
        with connect(
            url,
            subprotocols=["pollctl", f"bearer.{TOKEN}"],  # type: ignore[list-item]
            open_timeout=5,
        ) as ws:
            assert ws.subprotocol == "pollctl"
            feed = frames(ws)
            ws.send(json.dumps({"op": "subscribe", "topics": ["gateways.gw0", "global"]}))
            assert next(feed) == {"op": "subscribed", "topics": ["gateways.gw0", "global"]}
            ws.send(json.dumps({"op": "subscribe", "topics": ["nosuch"]}))
            assert "unknown topic 'nosuch'" in next(feed)["error"]
            channel = keys.live("gateways.gw0")
            wait_until(lambda: subscribers(redis_client, channel) == 1, 5, "the API subscribed")

            watch = LiveWatch()
            assert publish(redis_client, keys, watch, [poll(1), poll(2)], NAMES.get) == 2
            first, second = next(feed), next(feed)
            assert first["topic"] == "gateways.gw0" and first["data"]["readings"][0]["unit"] == "°C"
            assert second == {
                "topic": "global",
                "data": {"polls": 2, "outcomes": {"ok": 2}, "gateways": {"gw0": "ok", "gw1": "ok"}},
            }

            ws.send(json.dumps({"op": "unsubscribe", "topics": ["gateways.gw0"]}))
            assert next(feed) == {"op": "subscribed", "topics": ["global"]}
            wait_until(lambda: subscribers(redis_client, channel) == 0, 5, "the API unsubscribed")
            watch.checked_at -= 1
            publish(redis_client, keys, watch, [poll(1)], NAMES.get)
            # Published in one pipeline, gw0's first: the next frame is the summary.
            assert next(feed)["topic"] == "global"

            beat = next(f for f in frames(ws, skip_heartbeats=False) if f.get("op") == "heartbeat")
            assert beat["at"].endswith("Z") and beat["dropped"] == 0
    finally:
        api.stop()
