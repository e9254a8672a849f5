"""The live feed's publishing side: after a batch's records are saved, its outcomes and
readings go to Redis pub/sub (`Keys.live`), where the API relays them to `/ws` clients.

    gateways.NAME   one message per gateway per saved batch: outcome, slot, duration,
                    lateness, error, readings with their units (`gateway_message`)
    global          one fleet summary per saved batch: counts by outcome and each
                    gateway's outcome (`global_message`)

A PUBLISH to a channel nobody listens on still costs a round trip's share and the JSON, so
a process asks Redis which live channels have subscribers (`PUBSUB CHANNELS`, one command
answered from the server's channel table, at most once per `WATCH_REFRESH_S`) and
publishes only to those: with no browser open, a batch costs nothing here; with one, a
subscription reaches the workers within that second. The API subscribes to each channel
(never a pattern), which is what `PUBSUB CHANNELS` sees.

Publishing never fails or holds up a poll beyond one pipelined round trip: it runs after
the record is written, and any error is counted (`LiveWatch.failures`) and logged at DEBUG.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import redis

from .keys import Keys
from .records import Entry, MissedRun, PollEntry
from .redisio import as_text
from .schedule import dt_to_ms, ms_to_dt
from .timefmt import iso_z

log = logging.getLogger(__name__)

#: Seconds a process trusts its list of subscribed live channels.
WATCH_REFRESH_S = 1.0


@dataclass
class LiveWatch:
    """One process's view of which live channels have subscribers, and its count of
    publishing failures (kept on the Runtime)."""

    channels: frozenset[str] = frozenset()
    checked_at: float = float("-inf")
    failures: int = 0
    monotonic: Callable[[], float] = field(default=time.monotonic, repr=False)

    def watched(self, client: redis.Redis, keys: Keys) -> frozenset[str]:
        now = self.monotonic()
        if now - self.checked_at >= WATCH_REFRESH_S:
            # Set first: a Redis that fails here is asked again only a second later.
            self.checked_at = now
            self.channels = frozenset(as_text(c) for c in client.pubsub_channels(keys.live("*")))
        return self.channels


def publish(
    client: redis.Redis,
    keys: Keys,
    watch: LiveWatch,
    entries: Sequence[Entry],
    name_of: Callable[[int], str | None],
) -> int:
    """Publish `entries` (one saved batch) to the live channels somebody listens on, in
    one pipeline. Returns the messages sent; never raises."""
    try:
        return _publish(client, keys, watch, entries, name_of)
    except Exception as exc:  # a side channel: counted, never raised into the poll
        watch.failures += 1
        log.debug("live feed not published (%s so far): %s", watch.failures, exc)
        return 0


def _publish(
    client: redis.Redis,
    keys: Keys,
    watch: LiveWatch,
    entries: Sequence[Entry],
    name_of: Callable[[int], str | None],
) -> int:
    if not entries:
        return 0
    watched = watch.watched(client, keys)
    if not watched:
        return 0
    messages: list[tuple[str, str]] = []
    outcomes: dict[str, str] = {}
    for entry in entries:
        gateway_id = entry.gateway_id if isinstance(entry, MissedRun) else entry.record.gateway_id
        name = name_of(gateway_id)
        if name is None:
            continue
        data = gateway_message(name, entry)
        outcomes[name] = str(data["outcome"])
        channel = keys.live(f"gateways.{name}")
        if channel in watched:
            messages.append((channel, json.dumps(data)))
    if keys.live("global") in watched and outcomes:
        messages.append((keys.live("global"), json.dumps(global_message(outcomes))))
    if not messages:
        return 0
    pipe = client.pipeline(transaction=False)
    for channel, text in messages:
        pipe.publish(channel, text)
    pipe.execute()
    return len(messages)


def gateway_message(name: str, entry: Entry) -> dict[str, object]:
    """What `gateways.NAME` carries for one record (times ISO UTC, durations in ms)."""
    if isinstance(entry, MissedRun):
        return {
            "gateway": name,
            "kind": "scheduled",
            "outcome": "missed",
            "slot": iso_z(ms_to_dt(entry.first_ms)),
            "last_slot": iso_z(ms_to_dt(entry.last_ms)),
            "slots": entry.count,
            "error": entry.why,
        }
    return _poll_message(name, entry)


def _poll_message(name: str, entry: PollEntry) -> dict[str, object]:
    record = entry.record
    started, finished = record.started_at, record.finished_at
    duration = dt_to_ms(finished) - dt_to_ms(started) if started and finished else None
    lateness = dt_to_ms(started) - record.slot_ms if started else None
    return {
        "gateway": name,
        "kind": str(record.kind),
        "outcome": str(record.outcome),
        "slot": iso_z(ms_to_dt(record.slot_ms)),
        "duration_ms": duration,
        "lateness_ms": lateness,
        "error": record.error,
        "readings": [
            {
                "point": r["point"],
                "value": r["text"] if r["text"] is not None else r["value"],
                "unit": r["unit"],
            }
            for r in entry.readings
        ],
    }


def global_message(outcomes: dict[str, str]) -> dict[str, object]:
    """The fleet summary of one batch: counts by outcome, and each gateway's outcome (so a
    page knows which of its tiles to refresh)."""
    return {
        "polls": len(outcomes),
        "outcomes": dict(Counter(outcomes.values())),
        "gateways": outcomes,
    }


def publish_transition(
    client: redis.Redis,
    keys: Keys,
    gateway: str,
    event: str,
    *,
    next_probe_at: datetime | None = None,
    error: str | None = None,
) -> None:
    """A breaker's transition (disabled by failures, probe failed, recovered) to `global`
    and `gateways.NAME`, one round trip, whoever listens: transitions are rare."""
    message = json.dumps(
        {
            "event": event,
            "gateway": gateway,
            "next_probe_at": iso_z(next_probe_at),
            "error": error,
        }
    )
    try:
        pipe = client.pipeline(transaction=False)
        pipe.publish(keys.live("global"), message)
        pipe.publish(keys.live(f"gateways.{gateway}"), message)
        pipe.execute()
    except Exception as exc:  # the live feed is best effort
        log.debug("transition of %s not published: %s", gateway, exc)
