"""A worker's heartbeat in Redis (what it consumes, its code and configuration), written
by a thread from `worker_ready` until shutdown; and the sent-at header on every message,
from which diagnostics tell the age of the oldest waiting one."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import redis
from celery.signals import before_task_publish, worker_ready, worker_shutting_down

from polling import heartbeat
from polling.broker import SENT_HEADER
from polling.keys import Keys
from polling.schedule import now_ms

from .app import settings

log = logging.getLogger(__name__)

_stop = threading.Event()


@before_task_publish.connect
def _stamp_sent_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers.setdefault(SENT_HEADER, now_ms())


@worker_ready.connect
def _start_heartbeat(sender: Any, **_: Any) -> None:
    hostname = sender.hostname
    queues = tuple(sorted(sender.app.amqp.queues.consume_from))
    thread = threading.Thread(
        target=_beat, args=(hostname, queues), name="pollctl-heartbeat", daemon=True
    )
    thread.start()


@worker_shutting_down.connect
def _stop_heartbeat(sig: str = "", how: str = "", exitcode: int = 0, **_: Any) -> None:
    _stop.set()


def _beat(hostname: str, queues: tuple[str, ...]) -> None:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    key = Keys(settings.key_prefix).worker(hostname)
    while not _stop.is_set():
        info = heartbeat.this_process(hostname, settings, now_ms(), queues=queues)
        try:
            heartbeat.publish(client, key, info)
        except redis.RedisError as exc:
            log.warning("heartbeat not written: %s", exc)
        _stop.wait(heartbeat.PERIOD_SECONDS)
    with contextlib.suppress(redis.RedisError):  # it expires on its own anyway
        client.delete(key)
