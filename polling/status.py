"""The status of every gateway: its configuration, chain and recent record."""

from __future__ import annotations

from . import configcache, queries
from .runtime import Runtime
from .service import is_overdue


def collect_status(rt: Runtime) -> list[queries.GatewayStatus]:
    chains = rt.chains.all()
    now = rt.clock()
    overdue = {
        g.id
        for g in configcache.fleet(rt)
        if g.id in chains and is_overdue(rt, g, chains[g.id], now)
    }
    with rt.sessions() as session:
        return queries.gateway_statuses(session, chains, overdue)
