"""The fleet's chains: start, stop and reconcile them, and poll one gateway now.

Sending a step is the caller's business (`enqueue`), so this module never imports Celery.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from redis.exceptions import LockError
from redis.lock import Lock
from sqlalchemy.orm import Session

from . import configcache, counters, planstore
from .accounting import Served
from .chains import ChainState, EndpointLock
from .errors import GatewayNotFound
from .liveness import Overdue, is_ahead
from .pacing import paced_firsts
from .pipeline import poll_once, retire_chains
from .plan import PollTarget
from .records import MissedRun, last_recorded_slots, record_missed_runs
from .repository import (
    StoredGateway,
    fleet_summary,
    load_gateways,
    lock_active,
    reenable,
    set_chain_tokens,
    set_polling_many,
    set_polling_since,
)
from .runtime import Runtime
from .saving import flush
from .schedule import ms_to_dt

log = logging.getLogger(__name__)

#: Sends the first step of a chain: (gateway id, token, slot start in ms, the gateway's
#: site, whose queue it goes to).
Enqueue = Callable[[int, str, int, str], None]


@dataclass
class FleetReport:
    """What start, stop or reconcile did, gateway names per action."""

    started: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missed: int = 0
    #: Buffered records written to the database.
    flushed: int = 0
    #: Chains a reconcile left for its next run, past its time budget.
    deferred: int = 0

    def repairs(self) -> list[str]:
        """What a reconcile changed, in words, for the diagnostics record."""
        actions = [f"started chain of {n}" for n in self.started]
        actions += [f"restarted overdue chain of {n} with a new token" for n in self.restarted]
        actions += [f"retired stray chain of {n}" for n in self.retired]
        if self.missed:
            actions.append(f"recorded {self.missed} slots the dead chains left as missed")
        if self.flushed:
            actions.append(f"wrote {self.flushed} buffered records to the database")
        if self.deferred:
            actions.append(f"left {self.deferred} chains to the next run (time budget spent)")
        return actions


def retry_full_plans(rt: Runtime) -> int:
    """The daily retry of learnt request plans (polling/learnedplan.py): those past their
    `retry_at` go back to the full plan, and every process is told. One indexed query
    when none is due."""
    with rt.sessions() as session, session.begin():
        count = planstore.retry_due(session, ms_to_dt(rt.clock()))
    if count:
        rt.bump_config()
    return count


def replan(rt: Runtime, name: str) -> bool:
    """`pollctl gateway replan`: the full plan again for the gateway, at its next poll;
    False if it had no learnt plan to drop."""
    gateway = named_gateways(rt, [name])[0]
    with rt.sessions() as session, session.begin():
        count = planstore.reset_plans(session, [gateway.id], ms_to_dt(rt.clock()), "replan")
    rt.bump_config()
    return bool(count)


def select_gateways(rt: Runtime, names: Iterable[str] | None) -> list[PollTarget]:
    """The named gateways (all when `names` is None), planned; unknown names are an error."""
    stored = named_gateways(rt, names)
    with rt.sessions() as session:
        return planstore.targets(session, stored, rt.settings)


def named_gateways(rt: Runtime, names: Iterable[str] | None) -> list[StoredGateway]:
    """`select_gateways` without the plans."""
    wanted = None if names is None else list(dict.fromkeys(names))
    with rt.sessions() as session:
        gateways = load_gateways(session, wanted)
    if wanted is not None:
        unknown = sorted(set(wanted) - {g.config.name for g in gateways})
        if unknown:
            raise GatewayNotFound(f"unknown gateway: {', '.join(unknown)}")
    return gateways


def start(rt: Runtime, enqueue: Enqueue, names: Iterable[str] | None = None) -> FleetReport:
    """Mark gateways as polling and start a chain for each enabled one without a live chain.
    Naming a gateway also re-enables it if it was disabled (automatically or in its file)."""
    report = FleetReport()
    explicit = names is not None
    flush(rt)  # buffered records first, so no slot they hold is taken for a gap
    gateways = named_gateways(rt, names)
    fresh = {g.id for g in gateways if not g.polling}  # no poll of theirs can be in flight
    with rt.sessions() as session, session.begin():
        for gateway in gateways:
            if explicit and not gateway.enabled:
                reenable(session, gateway.id)
                log.warning(
                    "gateway %s re-enabled by the operator (was: %s)",
                    gateway.config.name,
                    gateway.disabled_reason or "disabled in its configuration",
                    extra={"gateway": gateway.config.name},
                )
        set_polling_many(session, [g.id for g in gateways], on=True)
    rt.bump_config()
    live = rt.chains.all()
    now = rt.clock()
    overdue = Overdue(configcache.fleet(rt), rt.settings.overdue_grace)
    # Reloaded, not patched in memory: set_polling_many stamps polling_since, which tells
    # _start_chain a stop (no missed slots) from a dead chain.
    starts: list[tuple[PollTarget, ChainState | None]] = []
    for gateway in select_gateways(rt, [g.config.name for g in gateways]):
        name = gateway.config.name
        if not gateway.enabled:
            report.skipped[name] = gateway.disabled_reason or "disabled in its configuration"
            continue
        chain = live.get(gateway.id)
        if chain is not None and not overdue(gateway, chain, now):
            report.already.append(name)
            continue
        starts.append((gateway, chain))
    _, active = start_chains(rt, enqueue, starts, now, fresh)
    report.started = [g.config.name for g, _ in starts if g.id in active]
    return report


def start_chains(
    rt: Runtime,
    enqueue: Enqueue,
    starts: list[tuple[PollTarget, ChainState | None]],
    now: int,
    fresh: set[int] | frozenset[int] = frozenset(),
) -> tuple[int, set[int]]:
    """Issue a new token for each gateway and send its chain's first step (see
    `Grid.starting`); with an old chain (restart), the slots it left unpolled are recorded
    as missed. A gateway that was polling (not in `fresh`) never starts in a slot that
    began before Redis's state did, and, when its chain is missing, never in the slot in
    progress: Redis lost the chain (a restart, a failover or a partial rollback that kept
    the epoch), and a poll of that slot may be in flight under claims it lost. A few
    statements and one Redis round trip for the lot, so starting ten thousand chains takes
    seconds. Gateways stopped or disabled since `starts` was read are left alone. Returns
    the missed slots recorded and the gateways started."""
    if not starts:
        return 0, set()
    born = rt.chains.epoch_born(now)
    firsts: list[tuple[PollTarget, int, int | None]] = []
    runs: list[MissedRun] = []
    with rt.sessions() as session, session.begin():
        active = lock_active(session, [g.id for g, _ in starts])
        starts = [(g, old) for g, old in starts if g.id in active]
        unseen = [g.id for g, old in starts if old is None and g.polling_since is not None]
        recorded = last_recorded_slots(session, unseen)
        for gateway, chain in starts:
            grid = gateway.grid
            # A chain too far ahead: its slots are not the fleet clock's, start afresh.
            old = None if chain is not None and is_ahead(gateway, chain, now) else chain
            not_before = 0 if gateway.id in fresh else (now if chain is None else born)
            first = grid.starting(now, not_before_ms=not_before)
            last = old.last_ms if old else None
            if old is not None and last is None and grid.is_slot(old.due_ms):
                last = old.due_ms - grid.interval_ms  # it died before accounting for any slot
            if old is None and gateway.polling_since is not None:
                last = recorded.get(gateway.id)
                since = round(gateway.polling_since.timestamp() * 1000)
                if last is not None and last < since:
                    last = None  # the gap is a stop, not a miss
            if last is not None and grid.is_slot(last) and last >= first:
                # Redis lost the chain (and its claims) after this slot was recorded.
                first = last + grid.interval_ms
            if last is not None and grid.is_slot(last):
                gap, count = grid.between(last, first)
                if count:
                    why = "no poll ran: the chain had died"
                    runs.append(MissedRun(gateway.id, gap, count, grid.interval_ms, why))
            firsts.append((gateway, first, last))
        firsts, paced = _paced(rt, session, firsts, fresh, now)
        missed = record_missed_runs(session, runs)
        tokens = rt.chains.issue([(g.id, first, last) for g, first, last in firsts], paced)
        set_chain_tokens(session, [(g.id, t) for (g, _, _), t in zip(firsts, tokens, strict=True)])
    counters.count_records(rt.redis, rt.keys, runs)
    for (gateway, first, _), token in zip(firsts, tokens, strict=True):
        enqueue(gateway.id, token, first, gateway.config.site)
    return missed, active


def _paced(
    rt: Runtime,
    session: Session,
    firsts: list[tuple[PollTarget, int, int | None]],
    fresh: set[int] | frozenset[int],
    now: int,
) -> tuple[list[tuple[PollTarget, int, int | None]], dict[int, int]]:
    """The first slots of the `fresh` gateways (a start from stopped: their connections are
    not open) paced to `POLLING_START_RATE` first polls a second, and when each moved one
    may begin (its chain says so: reconcile must not take a first slot more than an
    interval ahead for a clock's error). A moved gateway's `polling_since` moves with it,
    so the wait is a pause, not an outage (colour, offline alerts). Restarts are never
    paced: each waiting slot would be one more missed."""
    new = [(i, g.grid, first) for i, (g, first, _) in enumerate(firsts) if g.id in fresh]
    cap_ms = round(1000 * rt.settings.max_interval)
    paced = paced_firsts(
        [(grid, first) for _, grid, first in new], now, rt.settings.start_rate, cap_ms
    )
    out = list(firsts)
    moved: list[tuple[int, datetime]] = []  # polling begins at the first slot
    begins: dict[int, int] = {}  # the chain's paced start: within an interval before it
    for (i, grid, first), later in zip(new, paced, strict=True):
        if later != first:
            gateway, _, last = firsts[i]
            out[i] = (gateway, later, last)
            moved.append((gateway.id, ms_to_dt(later)))
            begins[gateway.id] = later - grid.interval_ms
    set_polling_since(session, moved)
    return out, begins


def stop(rt: Runtime, names: Iterable[str] | None = None) -> FleetReport:
    """Retire the chains and wait for polls in flight: nothing polls once this returns.
    `stopped` names the gateways that were polling (started, or with a live chain)."""
    report = FleetReport()
    stored = named_gateways(rt, names)
    gateways = [PollTarget.of(g, rt.settings) for g in stored]
    live = rt.chains.all()
    with rt.sessions() as session, session.begin():
        set_polling_many(session, [g.id for g in gateways], on=False)
    rt.bump_config()
    for gateway, row in zip(gateways, stored, strict=True):
        rt.chains.retire(gateway.id)
        if row.polling or gateway.id in live:
            report.stopped.append(gateway.config.name)
    for endpoint in {(g.config.host, g.config.port): g for g in gateways}.values():
        _wait_for_endpoint(rt, endpoint)
    return report


def _wait_for_endpoint(rt: Runtime, gateway: PollTarget) -> None:
    """Until no poll holds the endpoint's lock (a poll that passed its token check holds it
    until its batch has recorded), at most as long as the lock still lives (its TTL bounds
    the batch), or one poll budget if that is longer."""
    host, port = gateway.endpoint
    key = rt.keys.endpoint_lock(host, port)
    lock = EndpointLock(key, uuid.uuid4().hex, 5000)
    lives_s = max(0, int(rt.redis.pttl(key))) / 1000
    deadline = time.monotonic() + max(gateway.budget, lives_s)
    while rt.chains.take(lock) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    rt.chains.release([lock])


#: Reconcile's lock lives this long unless extended; each chunk of chains extends it.
RECONCILE_LOCK_SECONDS = 60
#: Chains started per transaction; the lock is extended after each.
RESTART_CHUNK = 1000
#: A run stops starting chains after this long and leaves the rest to the next run, so
#: runs never overlap and a huge repair is spread over several (each bounded).
RECONCILE_BUDGET_SECONDS = 20.0


def reconcile(rt: Runtime, enqueue: Enqueue) -> FleetReport:
    """Give every active gateway exactly one live chain: start missing ones, restart
    overdue ones with a new token, retire chains of inactive or deleted gateways. Bounded:
    chains start in chunks under a lock extended after each, and what the time budget
    leaves is the next run's work (state-driven, so it resumes where this one stopped)."""
    report = FleetReport()
    lock = rt.redis.lock(rt.keys.reconcile_lock, timeout=RECONCILE_LOCK_SECONDS, blocking_timeout=0)
    if not lock.acquire():
        return report  # another reconcile is running; it does the same work
    began = time.monotonic()
    try:
        report.flushed = flush(rt)  # before gaps are computed from the database
        with rt.sessions() as session:
            configcache.note_fleet(rt, *fleet_summary(session))
        retry_full_plans(rt)
        gateways = {g.id: g for g in configcache.fleet(rt)}
        chains = rt.chains.all()
        now = rt.clock()
        overdue = Overdue(gateways.values(), rt.settings.overdue_grace)
        starts: list[tuple[PollTarget, ChainState | None]] = []
        for gateway in gateways.values():
            chain = chains.get(gateway.id)
            if not gateway.active:
                continue
            if chain is None:
                starts.append((gateway, None))
                report.started.append(gateway.config.name)
            elif overdue(gateway, chain, now) or is_ahead(gateway, chain, now):
                starts.append((gateway, chain))
                report.restarted.append(gateway.config.name)
        names = _start_in_chunks(rt, enqueue, starts, now, lock, began, report)
        report.started = [n for n in report.started if n in names]
        report.restarted = [n for n in report.restarted if n in names]
        strays: list[tuple[int, str]] = []
        for gateway_id in chains:
            owner = gateways.get(gateway_id)
            if owner is None or not owner.active:
                strays.append((gateway_id, ""))
                report.retired.append(owner.config.name if owner else f"#{gateway_id}")
        retire_chains(rt, strays)
    finally:
        with contextlib.suppress(LockError):
            lock.release()
    if report.started or report.restarted or report.retired or report.flushed:
        log.warning("reconcile: %s", report)
    return report


def _start_in_chunks(
    rt: Runtime,
    enqueue: Enqueue,
    starts: list[tuple[PollTarget, ChainState | None]],
    now: int,
    lock: Lock,
    began: float,
    report: FleetReport,
) -> set[str]:
    """Start chains a chunk per transaction, extending the lock after each, until the time
    budget is spent; returns the names started."""
    names: set[str] = set()
    for at in range(0, len(starts), RESTART_CHUNK):
        if at and time.monotonic() - began > RECONCILE_BUDGET_SECONDS:
            report.deferred = len(starts) - at
            break
        chunk = starts[at : at + RESTART_CHUNK]
        missed, active = start_chains(rt, enqueue, chunk, rt.clock() if at else now)
        report.missed += missed
        names |= {g.config.name for g, _ in chunk if g.id in active}
        lock.reacquire()  # raises if the lock was lost: no second run may overlap
    return names


def poll_now(rt: Runtime, name: str) -> Served:
    """One poll of the named gateway at once (see `pipeline.poll_once`)."""
    return poll_once(rt, select_gateways(rt, [name])[0])
