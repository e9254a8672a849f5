"""Chains of polls: one step of a chain, and start, stop and reconcile over the fleet.

Sending a task is the caller's business (`enqueue`), so this module never imports Celery.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from redis.exceptions import LockError

from . import configcache
from .chains import ChainState
from .errors import GatewayNotFound
from .plan import Request
from .poller import PollOutcome, claim_ttl_ms, execute_poll, poll_budget, requests_for
from .recording import flush, missed_entry, save
from .runtime import Runtime
from .schedule import Grid
from .store import (
    StoredGateway,
    fleet_summary,
    last_recorded_slots,
    load_gateways,
    record_missed_runs,
    reenable,
    set_chain_token,
    set_chain_tokens,
    set_polling_many,
)

log = logging.getLogger(__name__)

#: Sends the poll task of one chain step: (gateway id, token, slot start in ms).
Enqueue = Callable[[int, str, int], None]
#: Most missed slots recorded at once, so a gateway stopped for a month at 1 s
#: does not write millions of rows in one go.
MISSED_LIMIT = 10_000


@dataclass(frozen=True)
class StepResult:
    #: polled | stale | moved | claimed | retired
    verdict: str
    outcome: str | None = None
    next_ms: int | None = None


def grid_of(gateway: StoredGateway) -> Grid:
    return Grid.for_gateway(gateway.config.name, gateway.config.interval)


def budget_of(rt: Runtime, gateway: StoredGateway) -> float:
    return poll_budget(gateway.config, len(requests_for(rt, gateway.config)))


def poll_step(rt: Runtime, gateway_id: int, token: str, slot_ms: int) -> StepResult:
    """One link of a chain: poll `slot_ms` if this task still owns it, then advance the
    chain to the next slot. Returns the slot to enqueue next, if this task advanced it."""
    gateway = configcache.gateway_for_poll(rt, gateway_id)
    if gateway is None or not gateway.active:
        rt.chains.retire(gateway_id, token)
        return StepResult("retired")
    grid = grid_of(gateway)
    requests = requests_for(rt, gateway.config)
    budget = poll_budget(gateway.config, len(requests))
    ttl_ms = claim_ttl_ms(gateway.config, budget)
    verdict = rt.chains.begin(gateway_id, token, slot_ms, ttl_ms)
    if verdict in ("stale", "moved", "claimed"):
        log.info("poll of gateway %s slot %s dropped: %s", gateway_id, slot_ms, verdict)
        return StepResult(verdict)
    on_grid = grid.is_slot(slot_ms)
    foreign = verdict == "foreign"
    outcome = _poll_owned_slot(rt, gateway, grid, token, slot_ms, requests, foreign=foreign)
    if outcome is not None and outcome.outcome == "stale":
        return StepResult("stale")
    if outcome is not None and outcome.disabled_reason:
        retire_chain(rt, gateway_id, token)
        return StepResult("retired", outcome.outcome)
    now = rt.clock()
    next_ms = grid.following(slot_ms, now) if on_grid else grid.containing(now)
    if not rt.chains.advance(gateway_id, token, slot_ms, next_ms):
        return StepResult("stale", outcome.outcome if outcome else None)
    if on_grid:
        skipped = grid.between(slot_ms, next_ms, limit=MISSED_LIMIT)
        _missed(rt, gateway_id, skipped, "the previous poll ended after this slot had passed")
    return StepResult("polled", outcome.outcome if outcome else None, next_ms)


def _poll_owned_slot(
    rt: Runtime,
    gateway: StoredGateway,
    grid: Grid,
    token: str,
    slot_ms: int,
    requests: list[Request],
    *,
    foreign: bool,
) -> PollOutcome | None:
    if not grid.is_slot(slot_ms):
        return None  # the interval changed since this task was sent: realign, record nothing
    if foreign:
        # A retired chain claimed this slot and may have died holding it.
        _missed(rt, gateway.id, [slot_ms], "slot claimed by a chain that was replaced")
        return None
    now = rt.clock()
    if grid.ended(slot_ms, now):
        late = (now - slot_ms) / 1000
        _missed(rt, gateway.id, [slot_ms], f"poll task started {late:.1f} s after the slot began")
        return PollOutcome("missed")
    remaining = (slot_ms + grid.interval_ms - now) / 1000
    lock_wait = min(gateway.config.timeout, remaining)
    return execute_poll(rt, gateway, slot_ms, token=token, lock_wait=lock_wait, requests=requests)


def _missed(rt: Runtime, gateway_id: int, slots: list[int], why: str) -> None:
    if slots:
        save(rt, missed_entry(gateway_id, slots, why))


def retire_chain(rt: Runtime, gateway_id: int, token: str = "") -> None:
    """End the chain in Redis (only if it still has `token`, when given) and its mirror."""
    rt.chains.retire(gateway_id, token)
    with rt.sessions() as session, session.begin():
        set_chain_token(session, gateway_id, None)
    rt.bump_config()  # it may have been disabled: no process should poll it from memory


# -- the fleet -------------------------------------------------------------------------------


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

    def repairs(self) -> list[str]:
        """What a reconcile changed, in words, for the diagnostics record."""
        actions = [f"started chain of {n}" for n in self.started]
        actions += [f"restarted overdue chain of {n} with a new token" for n in self.restarted]
        actions += [f"retired stray chain of {n}" for n in self.retired]
        if self.missed:
            actions.append(f"recorded {self.missed} slots the dead chains left as missed")
        if self.flushed:
            actions.append(f"wrote {self.flushed} buffered records to the database")
        return actions


def select_gateways(rt: Runtime, names: Iterable[str] | None) -> list[StoredGateway]:
    """The named gateways (all when `names` is None); unknown names are an error."""
    wanted = None if names is None else list(dict.fromkeys(names))
    with rt.sessions() as session:
        gateways = load_gateways(session, wanted)
    if wanted is not None:
        unknown = sorted(set(wanted) - {g.config.name for g in gateways})
        if unknown:
            raise GatewayNotFound(f"unknown gateway: {', '.join(unknown)}")
    return gateways


def is_overdue(rt: Runtime, gateway: StoredGateway, chain: ChainState, now_ms: int) -> bool:
    """The due slot's poll should have started and finished by now: the chain is dead
    (its message lost with Redis, or held by a killed worker until the visibility timeout)."""
    limit = budget_of(rt, gateway) + rt.settings.overdue_grace
    return now_ms > chain.due_ms + round(1000 * limit)


def start(rt: Runtime, enqueue: Enqueue, names: Iterable[str] | None = None) -> FleetReport:
    """Mark gateways as polling and start a chain for each enabled one without a live chain.
    Naming a gateway also re-enables it if it was disabled (automatically or in its file)."""
    report = FleetReport()
    explicit = names is not None
    flush(rt)  # buffered records first, so no slot they hold is taken for a gap
    gateways = select_gateways(rt, names)
    with rt.sessions() as session, session.begin():
        for gateway in gateways:
            if explicit and not gateway.enabled:
                reenable(session, gateway.id)
        set_polling_many(session, [g.id for g in gateways], on=True)
    rt.bump_config()
    live = rt.chains.all()
    now = rt.clock()
    # Reloaded, not patched in memory: set_polling stamps polling_since, which tells
    # _start_chain a stop (no missed slots) from a dead chain.
    starts: list[tuple[StoredGateway, ChainState | None]] = []
    for gateway in select_gateways(rt, [g.config.name for g in gateways]):
        name = gateway.config.name
        if not gateway.enabled:
            report.skipped[name] = gateway.disabled_reason or "disabled in its configuration"
            continue
        chain = live.get(gateway.id)
        if chain is not None and not is_overdue(rt, gateway, chain, now):
            report.already.append(name)
            continue
        starts.append((gateway, chain))
        report.started.append(name)
    _start_chains(rt, enqueue, starts, now)
    return report


def _start_chains(
    rt: Runtime,
    enqueue: Enqueue,
    starts: list[tuple[StoredGateway, ChainState | None]],
    now: int,
) -> int:
    """Issue a new token for each gateway and send its chain's first step (see
    `Grid.starting`); with an old chain (restart), the slots it left unpolled are recorded
    as missed. A few statements and one Redis round trip for the lot, so starting ten
    thousand chains takes seconds. Returns the missed slots recorded."""
    if not starts:
        return 0
    unseen = [g.id for g, old in starts if old is None and g.polling_since is not None]
    firsts: list[tuple[StoredGateway, int, int | None]] = []
    runs: list[tuple[int, list[int], str]] = []
    with rt.sessions() as session, session.begin():
        recorded = last_recorded_slots(session, unseen)
        for gateway, old in starts:
            grid = grid_of(gateway)
            first = grid.starting(now)
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
                gap = grid.between(last, first, limit=MISSED_LIMIT)
                if gap:
                    runs.append((gateway.id, gap, "no poll ran: the chain had died"))
            firsts.append((gateway, first, last))
        missed = record_missed_runs(session, runs)
        tokens = rt.chains.issue_many([(g.id, first, last) for g, first, last in firsts])
        set_chain_tokens(session, [(g.id, t) for (g, _, _), t in zip(firsts, tokens, strict=True)])
    for (gateway, first, _), token in zip(firsts, tokens, strict=True):
        enqueue(gateway.id, token, first)
    return missed


def stop(rt: Runtime, names: Iterable[str] | None = None) -> FleetReport:
    """Retire the chains and wait for polls in flight: nothing polls once this returns."""
    report = FleetReport()
    gateways = select_gateways(rt, names)
    with rt.sessions() as session, session.begin():
        set_polling_many(session, [g.id for g in gateways], on=False)
    rt.bump_config()
    for gateway in gateways:
        rt.chains.retire(gateway.id)
        report.stopped.append(gateway.config.name)
    for endpoint in {(g.config.host, g.config.port): g for g in gateways}.values():
        _wait_for_endpoint(rt, endpoint)
    return report


def _wait_for_endpoint(rt: Runtime, gateway: StoredGateway) -> None:
    # A poll that passed its token check holds this lock until it has recorded.
    config = gateway.config
    lock = rt.redis.lock(
        rt.keys.endpoint_lock(config.host, config.port),
        timeout=5,
        sleep=0.01,
        blocking_timeout=budget_of(rt, gateway),
        thread_local=False,
    )
    if lock.acquire():
        with contextlib.suppress(LockError):
            lock.release()


def reconcile(rt: Runtime, enqueue: Enqueue) -> FleetReport:
    """Give every active gateway exactly one live chain: start missing ones, restart
    overdue ones with a new token, retire chains of inactive or deleted gateways."""
    report = FleetReport()
    lock = rt.redis.lock(rt.keys.reconcile_lock, timeout=60, blocking_timeout=0)
    if not lock.acquire():
        return report  # another reconcile is running; it does the same work
    try:
        report.flushed = flush(rt)  # before gaps are computed from the database
        with rt.sessions() as session:
            configcache.note_fleet(rt, *fleet_summary(session))
        gateways = {g.id: g for g in configcache.fleet(rt)}
        chains = rt.chains.all()
        now = rt.clock()
        starts: list[tuple[StoredGateway, ChainState | None]] = []
        for gateway in gateways.values():
            chain = chains.get(gateway.id)
            if not gateway.active:
                continue
            if chain is None:
                starts.append((gateway, None))
                report.started.append(gateway.config.name)
            elif is_overdue(rt, gateway, chain, now):
                starts.append((gateway, chain))
                report.restarted.append(gateway.config.name)
        report.missed += _start_chains(rt, enqueue, starts, now)
        for gateway_id in chains:
            owner = gateways.get(gateway_id)
            if owner is None or not owner.active:
                retire_chain(rt, gateway_id)
                report.retired.append(owner.config.name if owner else f"#{gateway_id}")
    finally:
        with contextlib.suppress(LockError):
            lock.release()
    if report.started or report.restarted or report.retired or report.flushed:
        log.warning("reconcile: %s", report)
    return report


def poll_now(rt: Runtime, name: str) -> PollOutcome:
    """One poll outside the schedule, recorded with kind 'manual'; it does not count
    towards the failure threshold and waits its turn for the endpoint lock."""
    gateway = select_gateways(rt, [name])[0]
    return execute_poll(rt, gateway, rt.clock(), kind="manual")
