"""The status of every gateway: its configuration, chain and recent record."""

from __future__ import annotations

from . import configcache, heartbeat, queries
from .alerts.store import open_critical_gateways
from .chains import ChainState
from .liveness import Overdue
from .runtime import Runtime
from .schedule import ms_to_dt


def collect_status(rt: Runtime) -> list[queries.GatewayStatus]:
    chains, overdue = live_chains(rt)
    consumed = polling_consumed(rt)
    with rt.sessions() as session:
        return queries.gateway_statuses(
            session,
            chains,
            overdue,
            consumed=consumed,
            now=ms_to_dt(rt.clock()),
            settings=rt.settings,
            critical=open_critical_gateways(session),
        )


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


#: What `pollctl status --state` filters on (a gateway may be in more than one).
STATES = ("polling", "waiting", "overdue", "stopped", "disabled", "failing")


def in_state(status: queries.GatewayStatus, state: str) -> bool:
    """polling, waiting (no worker consumes), overdue: its chain; stopped: enabled, no
    chain; disabled: by the operator or by failures; failing: its newest poll failed."""
    match state:
        case "stopped":
            return status.enabled and status.polling == "no"
        case "disabled":
            return not status.enabled
        case "failing":
            return status.last_outcome == "failed"
        case "polling":
            return status.polling == "yes"
        case _:
            return status.polling == state


def summary(statuses: list[queries.GatewayStatus]) -> str:
    """`10000 gateways: 9990 polling, 10 disabled, 3 failing`."""
    counts = [(state, sum(in_state(s, state) for s in statuses)) for state in STATES]
    parts = ", ".join(f"{n} {state}" for state, n in counts if n)
    return f"{len(statuses)} gateways" + (f": {parts}" if parts else "")
