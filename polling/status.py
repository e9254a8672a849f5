"""The status of every gateway: its configuration, chain and recent record."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

from . import configcache, heartbeat, queries
from .alerts.store import open_critical_gateways
from .chains import ChainState
from .liveness import Overdue
from .runtime import Runtime
from .schedule import ms_to_dt


def collect_status(rt: Runtime) -> list[queries.GatewayStatus]:
    chains, overdue = live_chains(rt)
    consumed = served_sites(rt)
    with rt.sessions() as session:
        statuses = queries.gateway_statuses(
            session,
            chains,
            overdue,
            consumed=consumed,
            now=ms_to_dt(rt.clock()),
            settings=rt.settings,
            critical=open_critical_gateways(session),
        )
    # The learnt plans' unavailable points, from the fleet `live_chains` just read.
    gone = {g.config.name: g.unavailable for g in configcache.fleet(rt) if g.unavailable}
    return [
        replace(s, unavailable=tuple(p.name for p in gone[s.name])) if s.name in gone else s
        for s in statuses
    ]


def polling_consumed(rt: Runtime) -> bool:
    """Whether a live worker consumes `polling` (by the heartbeats): else chains only wait."""
    return any(w.polls for w in heartbeat.live_workers(rt.redis, rt.keys))


def served_sites(rt: Runtime) -> set[str]:
    """The sites some live worker serves now (by the heartbeats): chains of the others
    only wait."""
    return set(heartbeat.serving(heartbeat.live_workers(rt.redis, rt.keys)))


@dataclass(frozen=True)
class SiteSummary:
    """One site: its gateways, who serves it, and its slots over the health window."""

    site: str
    gateways: int
    active: int
    workers: list[str]
    polled: int
    missed: int
    window_s: float

    def line(self) -> str:
        """`site east: 3 gateways (3 active), served by w-east@h; last 300 s: 90 polled,
        0 missed`."""
        served = f"served by {', '.join(self.workers)}" if self.workers else "NO WORKER"
        return (
            f"site {self.site}: {self.gateways} gateways ({self.active} active), {served}; "
            f"last {self.window_s:g} s: {self.polled} polled, {self.missed} missed"
        )


def site_summaries(rt: Runtime) -> list[SiteSummary]:
    """Every known site (those of the gateways and those workers serve), `default` first."""
    fleet = configcache.fleet(rt)
    serving = heartbeat.serving(heartbeat.live_workers(rt.redis, rt.keys))
    window = rt.settings.health_window
    with rt.sessions() as session:
        stats = queries.window_stats(session, ms_to_dt(rt.clock()) - timedelta(seconds=window))
    out = []
    for site in configcache.known_sites(rt):
        members = [g for g in fleet if g.config.site == site]
        found = [stats[g.id] for g in members if g.id in stats]
        out.append(
            SiteSummary(
                site,
                len(members),
                sum(g.active for g in members),
                serving.get(site, []),
                sum(st.polled for st in found),
                sum(st.outcomes.get("missed", 0) for st in found),
                window,
            )
        )
    return out


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
