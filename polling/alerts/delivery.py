"""Delivery of notifications through apprise: each URL of POLLING_ALERT_URLS is a channel,
tried with retries, all channels at once and within one time bound, so a dead channel
never holds up the others or the diagnostics task. Each channel's successes and failures
are counted in Redis (`/metrics`: pollctl_alert_notifications_total)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import apprise
import redis
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, wait_exponential
from tenacity.stop import stop_base

from ..errors import ConfigError
from ..keys import Keys
from ..redisio import as_text

log = logging.getLogger(__name__)

#: apprise's notification types: failure (critical), warning, success (resolved), info.
Kind = Literal["failure", "warning", "success", "info"]
OUTCOMES = ("ok", "failed")


@dataclass(frozen=True)
class Notification:
    title: str
    body: str
    kind: Kind = "info"


@dataclass(frozen=True)
class Channel:
    url: str
    #: Scheme and host only (`slack://T...A`, `json://127.0.0.1:8080`): what logs and
    #: metrics name the channel by, since apprise URLs hold tokens and passwords.
    label: str


def _plugin(url: str) -> Any:
    """apprise's plugin for `url`, or None. apprise logs an unparsable URL whole, secrets
    and all: its logger is off meanwhile."""
    logger = logging.getLogger("apprise")
    was, logger.disabled = logger.disabled, True
    try:
        return apprise.Apprise.instantiate(url)
    finally:
        logger.disabled = was


def channel_label(url: str) -> str:
    """`scheme://host[:port]` of apprise's own masked form of `url` (its tokens elided)."""
    plugin = _plugin(url)
    shown = plugin.url(privacy=True) if plugin is not None else url
    parts = urlsplit(shown)
    host = parts.hostname or "?"
    if plugin is None:
        host = "?"  # an unparsable URL's "host" may be a secret: show nothing of it
    port = f":{parts.port}" if plugin is not None and parts.port else ""
    return f"{parts.scheme or '?'}://{host}{port}"


def channels_of(urls: Sequence[str]) -> list[Channel]:
    """A channel per URL; a URL apprise cannot use is one line naming it (masked)."""
    out = []
    for url in urls:
        if "://" not in url:
            raise ConfigError("POLLING_ALERT_URLS: a URL without a scheme (expected scheme://...)")
        if _plugin(url) is None:
            scheme = url.split("://", 1)[0]
            raise ConfigError(f"POLLING_ALERT_URLS: {scheme}://... is not a URL apprise can use")
        out.append(Channel(url, channel_label(url)))
    return out


class Deliverer:
    """Sends notifications to every channel; see `send`."""

    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        attempts: int = 3,
        timeout: float = 10.0,
        redis_client: redis.Redis | None = None,
        keys: Keys | None = None,
    ) -> None:
        self.channels = list(channels)
        self.attempts = attempts
        self.timeout = timeout
        self.redis, self.keys = redis_client, keys

    def send(self, notes: Sequence[Notification]) -> list[dict[str, bool]]:
        """Each of `notes` to every channel; per note, channel label -> delivered. Returns
        within `timeout` seconds (a channel still trying then counts as failed)."""
        results: list[dict[str, bool]] = [{} for _ in notes]
        if not notes or not self.channels:
            return results
        deadline = time.monotonic() + self.timeout
        pool = ThreadPoolExecutor(len(self.channels), thread_name_prefix="alert-delivery")
        futures = {pool.submit(self._channel, c, notes, deadline): c for c in self.channels}
        done, _late = wait(futures, timeout=self.timeout)
        pool.shutdown(wait=False, cancel_futures=True)
        counts: dict[tuple[str, str], int] = {}
        for future, channel in futures.items():
            sent = future.result() if future in done else [False] * len(notes)
            if future not in done:
                log.warning("alert channel %s still busy after %gs", channel.label, self.timeout)
            for result, ok in zip(results, sent, strict=True):
                result[channel.label] = ok
                key = (channel.label, "ok" if ok else "failed")
                counts[key] = counts.get(key, 0) + 1
        self._count(counts)
        return results

    def _channel(
        self, channel: Channel, notes: Sequence[Notification], deadline: float
    ) -> list[bool]:
        """The notes in order through one channel, each with retries, until the deadline."""
        sender = apprise.Apprise()
        sender.add(channel.url)
        out = []
        for note in notes:
            ok = time.monotonic() < deadline and self._retrying(deadline)(_notify, sender, note)
            if not ok:
                log.warning("alert not delivered to %s: %s", channel.label, note.title)
            out.append(bool(ok))
        return out

    def _retrying(self, deadline: float) -> Retrying:
        class PastDeadline(stop_base):
            def __call__(self, retry_state: RetryCallState) -> bool:
                return time.monotonic() >= deadline

        return Retrying(
            stop=stop_after_attempt(self.attempts) | PastDeadline(),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_result(lambda ok: not ok),
            retry_error_callback=lambda _state: False,
        )

    def _count(self, counts: Mapping[tuple[str, str], int]) -> None:
        if self.redis is None or self.keys is None or not counts:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for (label, outcome), n in counts.items():
                pipe.hincrby(self.keys.alert_notifications, f"{label}|{outcome}", n)
            pipe.execute()
        except redis.RedisError as exc:  # counters are for watching: never fail delivery
            log.warning("alert delivery counters not updated: %s", exc)


def _notify(sender: apprise.Apprise, note: Notification) -> bool:
    try:
        return bool(sender.notify(body=note.body, title=note.title, notify_type=note.kind))
    except Exception as exc:  # a plugin's bug is one failed attempt, not a failed task
        log.warning("apprise raised %s: %s", type(exc).__name__, exc)
        return False


def read_counts(redis_client: redis.Redis, keys: Keys) -> dict[tuple[str, str], int]:
    """(channel label, outcome) -> notifications, for `/metrics`."""
    raw = redis_client.hgetall(keys.alert_notifications)
    out = {}
    for field, n in raw.items():
        label, _, outcome = as_text(field).rpartition("|")
        out[(label, outcome)] = int(n)
    return out
