"""Each process keeps the gateways it polls in memory, tagged with a configuration stamp
kept in Redis; a poll reloads its gateway from the database only when the stamp changed.

Every change pollctl makes (import, delete, start, stop, an automatic disable) sets a new
random stamp (`Runtime.bump_config`); so does reconcile when the newest `updated_at` in the
database moved, so a change made behind pollctl's back reaches the workers within a
reconcile period. A random stamp, not a counter: a Redis restart that loses it cannot bring
an old value back.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import DBAPIError

from .recording import is_unreachable
from .runtime import Runtime
from .store import StoredGateway, load_gateway


def gateway_for_poll(rt: Runtime, gateway_id: int) -> StoredGateway | None:
    """The gateway as configured now: from memory while the stamp holds, else from the
    database; while the database is unreachable, the last one read (the chain goes on
    polling and its records go to the buffer)."""
    raw = rt.redis.get(rt.keys.config_stamp)
    stamp = raw.decode() if isinstance(raw, bytes) else raw
    cached = rt.known.get(gateway_id)
    if cached is not None and rt.known_stamp.get(gateway_id) == stamp:
        return cached
    try:
        with rt.sessions() as session:
            gateway = load_gateway(session, gateway_id)
    except DBAPIError as exc:
        if not is_unreachable(exc) or cached is None:
            raise
        return cached
    if gateway is None:
        rt.known.pop(gateway_id, None)
        rt.known_stamp.pop(gateway_id, None)
    else:
        rt.known[gateway_id], rt.known_stamp[gateway_id] = gateway, stamp
    return gateway


def note_fleet(rt: Runtime, count: int, newest: datetime | None) -> None:
    """Called by reconcile with the gateway count and newest change in the database: a new
    stamp if either moved since it last looked."""
    seen = f"{count}:{newest.isoformat() if newest else ''}"
    previous = rt.redis.getset(rt.keys.config_seen, seen)
    if (
        previous is not None
        and (previous.decode() if isinstance(previous, bytes) else previous) != seen
    ):
        rt.bump_config()
