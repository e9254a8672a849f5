"""The status of every gateway: its configuration, chain and recent record."""

from __future__ import annotations

from . import configcache, heartbeat, queries
from .chains import ChainState
from .liveness import Overdue
from .runtime import Runtime


def collect_status(rt: Runtime) -> list[queries.GatewayStatus]:
    chains, overdue = live_chains(rt)
    consumed = polling_consumed(rt)
    with rt.sessions() as session:
        return queries.gateway_statuses(session, chains, overdue, consumed=consumed)


def polling_consumed(rt: Runtime) -> bool:
    """Whether a live worker consumes `polling` (by the heartbeats): else chains only wait."""
    return any(w.polls for w in heartbeat.live_workers(rt.redis, rt.keys))


def live_chains(rt: Runtime) -> tuple[dict[int, ChainState], set[int]]:
    """Every chain in Redis by gateway id, and the active gateways whose chain is overdue."""
    chains = rt.chains.all()
    now = rt.clock()
    fleet = configcache.fleet(rt)
    is_overdue = Overdue(fleet, rt.settings.overdue_grace)
    overdue = {g.id for g in fleet if g.id in chains and is_overdue(g, chains[g.id], now)}
    return chains, overdue
