"""The live feed's relay: `/ws` clients subscribe to topics, and one Redis pub/sub
connection per API process carries every topic any of them wants.

Protocol (JSON text frames):

    client  {"op": "subscribe", "topics": ["gateways.boiler-room", "global", "alerts"]}
            {"op": "unsubscribe", "topics": [...]}
    server  {"op": "subscribed", "topics": [...]}    the client's topics after each op
            {"topic": "gateways.boiler-room", "data": {...}}
            {"op": "heartbeat", "at": "2026-12-04T12:00:00.000Z"}   every POLLING_LIVE_HEARTBEAT
            {"op": "error", "error": "..."}           a bad message (the socket stays open)

Each client has a bounded queue (POLLING_LIVE_QUEUE): when a slow browser lets it fill,
newer messages for it are dropped (counted in its `dropped`), and no other client waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field

import redis
import redis.asyncio as aioredis

from polling.keys import Keys

log = logging.getLogger(__name__)

#: Topics one client may hold at once (a page holds a tile page's gateways and a few more).
MAX_TOPICS = 1000
#: How long the relay waits for a message before it applies new subscriptions.
POLL_S = 0.1
#: Pause before the relay reconnects to a Redis that failed.
RETRY_S = 1.0


class BadRequest(ValueError):
    """A client message the protocol does not allow (answered with an error frame)."""


def check_topic(topic: object) -> str:
    if not isinstance(topic, str):
        raise BadRequest(f"a topic is a string, not {topic!r}")
    if topic in ("global", "alerts") or (topic.startswith("gateways.") and len(topic) > 9):
        return topic
    raise BadRequest(f"unknown topic {topic!r}: gateways.NAME, global or alerts")


@dataclass(eq=False)
class Client:
    """One WebSocket's queue of frames (JSON text) and its topics."""

    queue: asyncio.Queue[str]
    topics: set[str] = field(default_factory=set)
    dropped: int = 0

    def offer(self, frame: str) -> None:
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped += 1


class LiveHub:
    """Topic -> clients, and the one pub/sub connection subscribed to every topic some
    client holds (subscriptions are applied by the relay task between reads)."""

    def __init__(self, redis_url: str, keys: Keys, queue_size: int) -> None:
        self._redis = aioredis.Redis.from_url(redis_url, socket_connect_timeout=5)
        self._keys = keys
        self._queue_size = queue_size
        self._clients: dict[str, set[Client]] = {}
        self._subscribed: set[str] = set()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._relay(), name="live-relay")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()

    def connect(self) -> Client:
        return Client(asyncio.Queue(self._queue_size))

    def disconnect(self, client: Client) -> None:
        self.unsubscribe(client, list(client.topics))

    def subscribe(self, client: Client, topics: list[str]) -> None:
        if len(client.topics | set(topics)) > MAX_TOPICS:
            raise BadRequest(f"at most {MAX_TOPICS} topics per connection")
        for topic in topics:
            client.topics.add(topic)
            self._clients.setdefault(topic, set()).add(client)
        self._changed.set()

    def unsubscribe(self, client: Client, topics: list[str]) -> None:
        for topic in topics:
            client.topics.discard(topic)
            holders = self._clients.get(topic)
            if holders is not None:
                holders.discard(client)
                if not holders:
                    del self._clients[topic]
        self._changed.set()

    def _channel(self, topic: str) -> str:
        return self._keys.live(topic)

    async def _relay(self) -> None:
        """Forever: keep the subscriptions equal to the topics held, fan messages out."""
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            self._subscribed = set()
            try:
                await self._read(pubsub)
            except (redis.RedisError, OSError) as exc:
                log.warning("live feed: redis failed (%s); reconnecting in %s s", exc, RETRY_S)
                await asyncio.sleep(RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _read(self, pubsub: aioredis.client.PubSub) -> None:
        prefix = self._keys.live("")
        while True:
            await self._sync(pubsub)
            if not self._subscribed:
                self._changed.clear()
                await self._changed.wait()
                continue
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_S)
            if message is None or message.get("type") != "message":
                continue
            topic = _text(message["channel"]).removeprefix(prefix)
            holders = self._clients.get(topic)
            if not holders:
                continue
            # Framed once for every holder; the payload is the publisher's JSON as it is.
            frame = f'{{"topic":{json.dumps(topic)},"data":{_text(message["data"])}}}'
            for client in holders:
                client.offer(frame)

    async def _sync(self, pubsub: aioredis.client.PubSub) -> None:
        if not self._changed.is_set() and self._subscribed:
            return
        self._changed.clear()
        wanted = set(self._clients)
        if add := wanted - self._subscribed:
            await pubsub.subscribe(*(self._channel(t) for t in add))
        if drop := self._subscribed - wanted:
            await pubsub.unsubscribe(*(self._channel(t) for t in drop))
        self._subscribed = wanted


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
