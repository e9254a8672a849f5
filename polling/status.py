"""The status of every gateway: its configuration, chain and recent record."""

from __future__ import annotations

from . import configcache, queries
from .liveness import Overdue
from .runtime import Runtime


def collect_status(rt: Runtime) -> list[queries.GatewayStatus]:
    chains = rt.chains.all()
    now = rt.clock()
    fleet = configcache.fleet(rt)
    is_overdue = Overdue(fleet, rt.settings.overdue_grace)
    overdue = {g.id for g in fleet if g.id in chains and is_overdue(g, chains[g.id], now)}
    with rt.sessions() as session:
        return queries.gateway_statuses(session, chains, overdue)
