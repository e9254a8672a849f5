"""A worker's heartbeat in Redis (what it consumes, its code and configuration), written
by a thread from the worker's start until its shutdown; and the sent-at header on every
message, from which diagnostics tell the age of the oldest waiting one."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import redis

from polling import heartbeat
from polling.keys import Keys
from polling.schedule import now_ms
from polling.settings import Settings

from .broker import SENT_HEADER
from .queues import POLLING

log = logging.getLogger(__name__)


def stamp_sent_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """`before_task_publish`: when the message was sent (ms)."""
    if headers is not None:
        headers.setdefault(SENT_HEADER, now_ms())


class Heartbeat:
    """Publishes this worker's heartbeat every `heartbeat.PERIOD_SECONDS` from a thread."""

    def __init__(self, settings: Settings, hostname: str, queues: tuple[str, ...]) -> None:
        self.settings = settings
        self.hostname = hostname
        self.queues = queues
        self._stop = threading.Event()

    def start(self) -> Heartbeat:
        threading.Thread(target=self._run, name="pollctl-heartbeat", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        s = self.settings
        client = redis.Redis.from_url(s.redis_url, socket_timeout=5, socket_connect_timeout=5)
        key = Keys(s.key_prefix).worker(self.hostname)
        polls = POLLING in self.queues
        while not self._stop.is_set():
            info = heartbeat.this_process(
                self.hostname, s, now_ms(), queues=self.queues, polls=polls
            )
            try:
                heartbeat.publish(client, key, info)
            except redis.RedisError as exc:
                log.warning("heartbeat not written: %s", exc)
            self._stop.wait(heartbeat.PERIOD_SECONDS)
        with contextlib.suppress(redis.RedisError):  # it expires on its own anyway
            client.delete(key)
