"""Each process keeps the gateways it polls in memory, planned (`PollTarget`) and tagged
with a configuration stamp kept in Redis; a poll reloads its gateway from the database only
when the stamp changed.

Every change pollctl makes (import, delete, start, stop, an automatic disable) sets a new
random stamp (`Runtime.bump_config`); so does reconcile when the newest `updated_at` in the
database moved, so a change made behind pollctl's back reaches the workers within a
reconcile period. A random stamp, not a counter: a Redis restart that loses it cannot bring
an old value back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import datetime

from sqlalchemy.exc import DBAPIError

from . import heartbeat, planstore
from .db import is_unreachable
from .plan import PollTarget
from .repository import load_gateways, load_gateways_by_id
from .runtime import Runtime
from .sites import DEFAULT_SITE, sites_of


def gateways_for_poll(rt: Runtime, ids: Iterable[int]) -> dict[int, PollTarget | None]:
    """The gateways as configured now (None for a deleted one): from memory while the stamp
    holds, else from the database in one query. While the database is unreachable, the
    last ones read (chains go on polling and their records go to the buffer); ids this
    process never read are left out."""
    raw = rt.redis.get(rt.keys.config_stamp)
    stamp = raw.decode() if isinstance(raw, bytes) else raw
    out: dict[int, PollTarget | None] = {}
    stale = []
    for gateway_id in ids:
        cached = rt.known.get(gateway_id)
        if cached is not None and rt.known_stamp.get(gateway_id) == stamp:
            out[gateway_id] = cached
        else:
            stale.append(gateway_id)
    if not stale:
        return out
    try:
        with rt.sessions() as session:
            stored = load_gateways_by_id(session, stale)
            loaded = {g.id: g for g in planstore.targets(session, stored, rt.settings)}
    except DBAPIError as exc:
        if not is_unreachable(exc):
            raise
        return out | {i: rt.known[i] for i in stale if i in rt.known}
    for gateway_id in stale:
        gateway = out[gateway_id] = loaded.get(gateway_id)
        if gateway is None:
            rt.known.pop(gateway_id, None)
            rt.known_stamp.pop(gateway_id, None)
        else:
            rt.known[gateway_id], rt.known_stamp[gateway_id] = gateway, stamp
    return out


def fleet(rt: Runtime) -> list[PollTarget]:
    """Every gateway, as `load_gateways` gives them, read again only after a change of the
    stamp: reconcile and the diagnostics look at the whole fleet every few seconds."""
    # A stamp lost with Redis is replaced, so the cache works again after a restart.
    rt.redis.set(rt.keys.config_stamp, uuid.uuid4().hex, nx=True)
    raw = rt.redis.get(rt.keys.config_stamp)
    stamp = raw.decode() if isinstance(raw, bytes) else raw
    if rt.fleet is not None and rt.fleet[0] == stamp:
        return rt.fleet[1]
    with rt.sessions() as session:
        gateways = planstore.targets(session, load_gateways(session), rt.settings)
    rt.fleet = (stamp, gateways)
    return gateways


def note_fleet(rt: Runtime, count: int, newest: datetime | None) -> None:
    """Called by reconcile with the gateway count and newest change in the database: a new
    stamp if either moved since it last looked."""
    seen = f"{count}:{newest.isoformat() if newest else ''}"
    previous = rt.redis.getset(rt.keys.config_seen, seen)
    if previous is None or (previous.decode() if isinstance(previous, bytes) else previous) != seen:
        rt.bump_config()


def names(rt: Runtime) -> Callable[[int], str | None]:
    """A gateway's name by id from what this process already holds (the gateways it
    polled, the fleet it last read), never a query: for how messages describe themselves."""
    by_id: dict[int, str] = {}
    indexed: list[object] = [None]  # the fleet list `by_id` was built from

    def name_of(gateway_id: int) -> str | None:
        target = rt.known.get(gateway_id)
        if target is not None:
            return target.config.name
        current = rt.fleet[1] if rt.fleet is not None else None
        if current is not None and current is not indexed[0]:
            by_id.clear()
            by_id.update({g.id: g.config.name for g in current})
            indexed[0] = current
        return by_id.get(gateway_id)

    return name_of


def sites(rt: Runtime) -> Callable[[int], str]:
    """A gateway's site by id, from the fleet as last read (`fleet`); `default` for one
    not in it (deleted meanwhile: whatever is sent for it dies at its token check)."""
    by_id = {g.id: g.config.site for g in fleet(rt)}
    return lambda gateway_id: by_id.get(gateway_id, DEFAULT_SITE)


def known_sites(rt: Runtime) -> list[str]:
    """Every site there is to look at: those of the gateways and those live workers serve,
    `default` first and always (the queue views list each site's queue, empty or not).
    Without the database, the workers' alone."""
    found = set(heartbeat.serving(heartbeat.live_workers(rt.redis, rt.keys)))
    try:
        found |= {g.config.site for g in fleet(rt)}
    except DBAPIError as exc:
        if not is_unreachable(exc):
            raise
    return sites_of(found | {DEFAULT_SITE})
