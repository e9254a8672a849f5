"""The poll pipeline: the steps of one poll-batch task, from their message to their
successors, in phases that hand values to each other.

    load     each step's gateway, planned (from memory while the configuration holds)
    claim    one script: each step's token and slot checked and the slot claimed, and
             the lock of every endpoint with a step to poll taken in the same call; a step
             the worker began behind is shed (`shedding.Shedder`): claimed
             and recorded as skipped, but no lock taken for it and never polled
    read     asyncio: every endpoint at once, each poll at its own slot, one request at a
             time per connection
    account  a pure function (`accounting.account`): the records and the chain advances
    commit   one transaction: poll-log rows and readings (the buffer, with the database down)
    advance  one script: each chain moved past its slot by compare-and-set, locks released;
             then the slots a late chain skipped are recorded and the chains of gateways
             this batch disabled are retired

Batching changes how steps travel, not what they guarantee: each step checks its own token,
claims its own slot, polls under its endpoint's lock (held until its record is written, so
`pollctl stop` can wait for it), leaves its own record, and only a compare-and-set advances
its chain. `poll_once` is a manual poll through the same read and record, under the same
lock, outside slot accounting.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import DBAPIError

from . import configcache, counters, learnedplan, live, planstore, saving, shedding
from .accounting import Begun, Ledger, Served, account, poll_entry
from .chains import EndpointLock, LockState, StepClaim
from .codec import decode_answers
from .db import is_unreachable
from .errors import DeviceExceptionResponse, ModbusError
from .learnedplan import LearnedPlan, Split
from .outcome import Outcome, PollKind
from .plan import PollTarget
from .planread import ILLEGAL_ADDRESS, read_plan
from .repository import set_chain_tokens
from .runtime import Runtime
from .schedule import ms_to_dt
from .sites import DEFAULT_SITE
from .steps import Step

log = logging.getLogger(__name__)

#: Pause between tries of an endpoint lock another poll holds.
LOCK_RETRY_S = 0.005
#: A poll waits for a busy endpoint a timeout and this much more: the poll holding it may
#: time out too, then close its connection and write its record before it lets go (a bus
#: neighbour waiting a bare timeout lost its slot 3 times in 7 on a busy box).
LOCK_WAIT_GRACE_S = 0.5


@dataclass(frozen=True)
class BatchResult:
    #: What became of the steps, counted by outcome.
    outcomes: Counter[Outcome]
    #: The successors to send: (gateway id, token, next slot) of every chain advanced.
    successors: list[Step]
    #: Gateway name -> error, of each failed poll (for the batch's log line).
    failed: dict[str, str] = field(default_factory=dict)
    #: The site of each successor's gateway (its queue); `default` when not listed.
    sites: dict[int, str] = field(default_factory=dict)
    #: Steps shed: begun too late after their slots, recorded as skipped, not polled.
    shed: int = 0

    def by_site(self) -> dict[str, list[Step]]:
        """The successors grouped by their gateways' sites, to be sent apart."""
        out: dict[str, list[Step]] = {}
        for step in self.successors:
            out.setdefault(self.sites.get(step[0], DEFAULT_SITE), []).append(step)
        return out


def poll_batch(rt: Runtime, steps: Sequence[Step], site: str | None = None) -> BatchResult:
    """One step of each chain in `steps` (slots of one window), phase by phase. Taken from
    `site`'s queue: a step whose gateway is on another site now is not polled here but
    forwarded, unchanged, to its site (None: every step is polled here)."""
    loaded, tally, forward = _load(rt, steps, site)
    sites = {target.id: target.config.site for target, _ in loaded + forward}
    forwarded = [step for _, step in forward]
    if not loaded:
        return BatchResult(tally, forwarded, sites=sites)
    now = rt.clock()
    begun, endpoints, shed = _claim(rt, loaded, now)
    served, held = _read(rt, [target for target, _ in loaded], begun, endpoints, now, shed)
    _save_learned(rt, [(loaded[i][0].id, s.learned) for i, s in served.items() if s.learned])
    ledger = account(begun, served, rt.clock())
    disabled = saving.save(rt, ledger.entries)
    for index, (target, _) in enumerate(loaded if disabled else ()):
        if begun[index].gateway_id in disabled:
            log.warning(
                "gateway %s auto-disabled: %s",
                target.config.name,
                disabled[target.id],
                extra=_fields(target, begun[index]),
            )
            live.publish_transition(
                rt.redis, rt.keys, target.config.name, "disabled", error=disabled[target.id]
            )
    successors = _advance(rt, begun, ledger, disabled, held, tally)
    counters.count_dropped(rt.redis, rt.keys, tally)
    failed = {
        loaded[i][0].config.name: s.error or ""
        for i, s in served.items()
        if s.outcome is Outcome.FAILED
    }
    shed_n = sum(
        begun[i].outcome is Outcome.DUE and shedding.is_shed(s.error) for i, s in served.items()
    )
    return BatchResult(tally, successors + forwarded, failed, sites, shed_n)


def _poll_fields(target: PollTarget, step: Begun | None) -> dict[str, object]:
    """`_fields`, or the gateway alone for a manual poll (no chain step)."""
    return _fields(target, step) if step else {"gateway": target.config.name}


def _fields(target: PollTarget, step: Begun) -> dict[str, object]:
    """What every line about one poll carries (see polling/logsetup.py)."""
    return {
        "gateway": target.config.name,
        "slot": ms_to_dt(step.slot_ms).isoformat(),
        "token": step.token,
    }


Loaded = list[tuple[PollTarget, Step]]


def _load(
    rt: Runtime, steps: Sequence[Step], site: str | None
) -> tuple[Loaded, Counter[Outcome], Loaded]:
    """Each step still to begin with its gateway; steps of gateways that are inactive,
    gone, or unknown while the database is down end here (counted); steps of gateways
    now on a site other than `site` go on there (the third list, counted as forwarded)."""
    gateways = configcache.gateways_for_poll(rt, {gateway_id for gateway_id, _, _ in steps})
    loaded: Loaded = []
    forward: Loaded = []
    tally: Counter[Outcome] = Counter()
    for step in steps:
        gateway_id, token, _ = step
        if gateway_id not in gateways:
            # Never read here and the database is down: reconcile restarts the chain (and
            # records the gap) once the database is back.
            log.warning("gateway #%s unknown while the database is down: not polled", gateway_id)
            tally[Outcome.UNKNOWN] += 1
        elif (target := gateways[gateway_id]) is None or not target.active:
            rt.chains.retire(gateway_id, token)
            tally[Outcome.RETIRED] += 1
        elif site is not None and target.config.site != site:
            forward.append((target, step))
            tally[Outcome.FORWARDED] += 1
        else:
            loaded.append((target, step))
    return loaded, tally, forward


Endpoints = list[tuple[EndpointLock, LockState]]


def _claim(rt: Runtime, loaded: Loaded, now: int) -> tuple[list[Begun], Endpoints, dict[int, str]]:
    """Begin every step in one script, with one lock per endpoint that has a slot still
    to poll, held from the first slot's start until the batch is recorded. Steps begun
    too late after their slots (by index, with the reason) are shed: claimed like the
    rest, so no copy polls them, but no lock is taken for them."""
    lateness = [
        shedding.Late(g, slot, t.grid.interval_ms, t.late_limit_ms) for t, (g, _, slot) in loaded
    ]
    shed = rt.shedder.to_shed(lateness, now)
    locks = _endpoint_locks(rt, loaded, now, shed)
    claims = [StepClaim(*step, target.claim_ttl_ms) for target, step in loaded]
    outcomes, states = rt.chains.begin(claims, locks)
    begun = []
    for (target, (gateway_id, token, slot)), outcome in zip(loaded, outcomes, strict=True):
        step = Begun(gateway_id, token, slot, target.grid, outcome)
        if outcome in (Outcome.STALE, Outcome.MOVED, Outcome.DUPLICATE):
            log.debug("poll dropped: %s", outcome, extra=_fields(target, step))
        begun.append(step)
    return begun, list(zip(locks, states, strict=True)), shed


def _endpoint_locks(
    rt: Runtime, loaded: Loaded, now: int, shed: Container[int]
) -> list[EndpointLock]:
    """For each endpoint, the steps (by index, earliest slot first) it serves."""
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for index, (target, (_, _, slot)) in enumerate(loaded):
        if index in shed:
            continue
        if target.grid.is_slot(slot) and not target.grid.ended(slot, now):
            groups[target.endpoint].append(index)
    value = uuid.uuid4().hex
    ttls: list[int] = []
    for indexes in groups.values():
        indexes.sort(key=lambda i: loaded[i][1][2])
        last_slot = loaded[indexes[-1]][1][2]
        budget_s = sum(loaded[i][0].budget for i in indexes) + 1
        ttls.append(last_slot - now + round(1000 * budget_s))
    # Every lock is released when the batch has recorded, after its slowest endpoint: each
    # lives as long, so `stop` and `gateway delete`, which wait for it, wait for the record.
    ttl_ms = max(ttls, default=0)
    return [
        EndpointLock(rt.keys.endpoint_lock(host, port), value, ttl_ms, tuple(indexes))
        for (host, port), indexes in groups.items()
    ]


def _read(
    rt: Runtime,
    targets: list[PollTarget],
    begun: list[Begun],
    endpoints: Endpoints,
    now: int,
    shed: Mapping[int, str],
) -> tuple[dict[int, Served], list[EndpointLock]]:
    """Poll the due steps of every endpoint whose lock this batch holds or waits for;
    returns each polled (or tried) step's read by index, the shed ones as skipped with
    their reason, and the locks held."""
    served = {i: Served(Outcome.SKIPPED, error=why) for i, why in shed.items()}
    held = [lock for lock, state in endpoints if state is LockState.LOCKED]
    groups = [
        (lock, [i for i in lock.steps if begun[i].outcome is Outcome.DUE], state)
        for lock, state in endpoints
        if state is not LockState.IDLE
    ]
    groups = [group for group in groups if group[1]]
    if not groups:
        return served, held
    # Until the last slot starts (never negative: a late batch still gets its budgets),
    # then every poll at its full budget. The deadline is kept inside the loop, so a late
    # batch still records and advances; the outer timeout is for a loop that no longer runs.
    wait_s = max(0, max(b.slot_ms for b in begun) - now) / 1000
    budget_s = wait_s + sum(t.budget for t in targets)
    serving = _serve_all(rt, targets, begun, groups, served, held, budget_s)
    rt.modbus.run(serving, timeout=budget_s + 60)
    return served, held


async def _serve_all(
    rt: Runtime,
    targets: list[PollTarget],
    begun: list[Begun],
    groups: Sequence[tuple[EndpointLock, list[int], LockState]],
    served: dict[int, Served],
    held: list[EndpointLock],
    budget_s: float,
) -> None:
    """Serve every endpoint; a poll still unfinished when the batch's budget runs out (the
    process's Modbus loop fell behind, as under a start of thousands of connections) is
    recorded as missed, not as a device failure that would count towards auto-disable."""
    serving = asyncio.gather(
        *(
            _serve_endpoint(rt, targets, begun, lock, indexes, state, served, held)
            for lock, indexes, state in groups
        )
    )
    try:
        await asyncio.wait_for(serving, budget_s)
    except TimeoutError:
        why = f"the worker's Modbus loop fell behind: not polled within {budget_s:.1f} s"
        for _, indexes, _ in groups:
            for index in indexes:
                served.setdefault(index, Served(Outcome.MISSED, error=why))


async def _serve_endpoint(
    rt: Runtime,
    targets: list[PollTarget],
    begun: list[Begun],
    lock: EndpointLock,
    indexes: list[int],
    state: LockState,
    served: dict[int, Served],
    held: list[EndpointLock],
) -> None:
    """The endpoint's polls one after the other, each at its slot, under its lock (waited
    for when another poll holds it: from the first slot a timeout and `LOCK_WAIT_GRACE_S`,
    and never past that slot)."""
    if state is LockState.BUSY:
        first = begun[indexes[0]]
        timeout_ms = round(1000 * (targets[indexes[0]].config.timeout + LOCK_WAIT_GRACE_S))
        # Counted from the slot, not from the batch's begin: a batch sent ahead of its slot
        # gave up before the poll it waited for had even timed out.
        deadline_ms = min(
            max(rt.clock(), first.slot_ms) + timeout_ms, first.slot_ms + first.grid.interval_ms
        )
        claims = [StepClaim(b.gateway_id, b.token, b.slot_ms) for b in (begun[i] for i in indexes)]
        current = await _take_lock(rt, lock, claims, deadline_ms)
        if current is None:
            host, port = targets[indexes[0]].endpoint
            busy = f"endpoint {host}:{port} busy: another poll held its lock"
            for index in indexes:
                served[index] = Served(Outcome.SKIPPED, ms_to_dt(rt.clock()), error=busy)
            return
        held.append(lock)
        for index, ok in zip(indexes, current, strict=True):
            if not ok:  # stopped while it waited: neither polled nor recorded
                served[index] = Served(Outcome.STALE)
    # Only the endpoint's first poll, and only when it waited for no other poll's lock, can
    # be shed here: the others queue behind it by design (five devices behind one bridge).
    may_shed = state is LockState.LOCKED
    for index in indexes:
        if index in served:
            continue
        step = begun[index]
        await asyncio.sleep(max(0.0, (step.slot_ms - rt.clock()) / 1000))
        now = rt.clock()
        if step.grid.ended(step.slot_ms, now):
            late = f"poll task started {(now - step.slot_ms) / 1000:.1f} s after the slot began"
            served[index] = Served(Outcome.MISSED, error=late)
            continue
        if may_shed and (why := _shed_in_loop(rt, targets[index], step, now)):
            served[index] = Served(Outcome.SKIPPED, error=why)
            continue
        may_shed = False
        served[index] = await _poll(rt, targets[index], step)


def _shed_in_loop(rt: Runtime, target: PollTarget, step: Begun, now: int) -> str | None:
    """A poll the worker's Modbus loop reaches past its late limit (the loop fell behind:
    the worker is overloaded) is shed, so the polls the worker does make stay on time."""
    late = shedding.Late(step.gateway_id, step.slot_ms, step.grid.interval_ms, target.late_limit_ms)
    return rt.shedder.past_limit(late, now)


async def _take_lock(
    rt: Runtime, lock: EndpointLock, claims: list[StepClaim], deadline_ms: int
) -> list[bool] | None:
    """Try a lock another poll holds until `deadline_ms`: None if it stayed busy, else
    whether each step is still current now that the lock is held."""
    while True:
        current = rt.chains.take(lock, claims)
        if current is not None or rt.clock() >= deadline_ms:
            return current
        await asyncio.sleep(LOCK_RETRY_S)


async def _poll(rt: Runtime, target: PollTarget, step: Begun | None = None) -> Served:
    """One read of every request of the gateway, within its budget, decoded (`step`: the
    chain step it serves, none for a manual poll). A refusal with exception 2 splits the
    plan (polling/planread.py): the poll is ok with the points that answered, or failed
    when a split read timed out, what the splitting proved kept all the same."""
    config = target.config
    started = ms_to_dt(rt.clock())
    learned = None
    try:
        read = await read_plan(rt.modbus, target)
        if read.split is not None:
            learned = _learnt(rt, target, read.split)
        if read.failure is not None:
            raise read.failure  # failed as any poll, what its splitting proved kept
        values = decode_answers(read.requests, read.answers)
        if learned is not None and not values:
            raise DeviceExceptionResponse(
                f"{read.refusal}; no point answered: {learned.events[-1][1]}",
                function_code=0,
                exception_code=ILLEGAL_ADDRESS,
            )
        if log.isEnabledFor(logging.DEBUG):  # the fields cost a per-poll format otherwise
            log.debug("poll ok: %d values", len(values), extra=_poll_fields(target, step))
        return Served(Outcome.OK, started, ms_to_dt(rt.clock()), values=values, learned=learned)
    except ModbusError as exc:
        error = str(exc)
    except Exception as exc:
        # Whatever a device or library does, the slot is recorded and the chain goes on.
        log.exception("unexpected error polling %s", config.name, extra=_poll_fields(target, step))
        error = f"unexpected error: {type(exc).__name__}: {exc}"
    if log.isEnabledFor(logging.DEBUG):
        log.debug("poll failed: %s", error, extra=_poll_fields(target, step))
    return Served(Outcome.FAILED, started, ms_to_dt(rt.clock()), error=error, learned=learned)


def _learnt(rt: Runtime, target: PollTarget, split: Split) -> LearnedPlan:
    """The plan a refusal taught, logged (the poll saves it once recorded)."""
    at = ms_to_dt(rt.clock())
    learned = learnedplan.learn(target.learned, target.basis, target.requests, split, at)
    log.warning(
        "gateway %s: request plan learnt: %s",
        target.config.name,
        learned.events[-1][1],
        extra={"gateway": target.config.name},
    )
    return learned


def _save_learned(rt: Runtime, plans: Sequence[tuple[int, LearnedPlan]]) -> None:
    """Store the plans polls learnt and tell every process (configcache reloads the
    gateways). With the database down, this process polls by them from memory meanwhile
    and they wait in the record buffer, saved by the flush once it is back."""
    if not plans:
        return
    try:
        with rt.sessions() as session, session.begin():
            planstore.save(session, plans)
    except DBAPIError as exc:
        if not is_unreachable(exc):
            log.warning("learnt request plans not saved: %s", exc)
            return
        _keep_learned(rt, plans, exc)
        return
    rt.bump_config()


def _keep_learned(rt: Runtime, plans: Sequence[tuple[int, LearnedPlan]], exc: DBAPIError) -> None:
    """Plans the database could not take: into the buffer, and into this process's gateways
    (`Runtime.known`, what it polls by while the database is down)."""
    for gateway_id, plan in plans:
        kept = rt.buffer.push(planstore.to_json(gateway_id, plan), rt.clock())
        if (target := rt.known.get(gateway_id)) is not None:
            rt.known[gateway_id] = PollTarget.of(target, rt.settings, plan)
        name = target.config.name if target is not None else f"#{gateway_id}"
        log.warning(
            "learnt request plan of %s kept %s until the database is back: %s",
            name,
            "in the buffer" if kept else "in memory only (buffer full)",
            str(exc.orig or exc).strip().split("\n", 1)[0],
        )


def _advance(
    rt: Runtime,
    begun: list[Begun],
    ledger: Ledger,
    disabled: dict[int, str],
    held: list[EndpointLock],
    tally: Counter[Outcome],
) -> list[Step]:
    """Advance the chains (all but those of gateways this batch disabled) and release the
    locks in one call; record the slots the advanced chains skipped; retire the chains of
    the disabled gateways. Returns the successors."""
    outcomes = list(ledger.outcomes)
    advances = [a for a in ledger.advances if begun[a.index].gateway_id not in disabled]
    moves = [(StepClaim(*_step(begun[a.index])), a.next_ms) for a in advances]
    moved = rt.chains.finish(moves, held)
    successors: list[Step] = []
    gaps = []
    for advance, ok in zip(advances, moved, strict=True):
        step = begun[advance.index]
        if not ok:
            outcomes[advance.index] = Outcome.STALE  # replaced meanwhile: its new chain goes on
            continue
        successors.append((step.gateway_id, step.token, advance.next_ms))
        if advance.gap is not None:
            gaps.append(advance.gap)
    saving.save(rt, gaps)
    for index, step in enumerate(begun):
        if step.gateway_id in disabled and outcomes[index].recorded:
            outcomes[index] = Outcome.RETIRED  # recorded, and its chain ends here
    retired = [
        (b.gateway_id, b.token)
        for b, o in zip(begun, outcomes, strict=True)
        if o is Outcome.RETIRED
    ]
    retire_chains(rt, retired)
    tally.update(outcomes)
    return successors


def _step(begun: Begun) -> Step:
    return begun.gateway_id, begun.token, begun.slot_ms


def retire_chains(rt: Runtime, chains: Sequence[tuple[int, str]]) -> None:
    """End chains in Redis (each only while it has its token; '' for any) and their token
    mirror, and tell every process: a gateway disabled or stopped must not be polled from
    memory."""
    if not chains:
        return
    for gateway_id, token in chains:
        rt.chains.retire(gateway_id, token)
    with rt.sessions() as session, session.begin():
        set_chain_tokens(session, [(gateway_id, None) for gateway_id, _ in chains])
    rt.bump_config()


# -- a manual poll ---------------------------------------------------------------------------


def poll_once(rt: Runtime, target: PollTarget, kind: PollKind = PollKind.MANUAL) -> Served:
    """One poll outside the schedule, recorded with `kind` (manual, or recovery's probe)
    at the time it was asked for: it waits its turn for the endpoint lock (at most the
    gateway's timeout, else it is recorded as skipped), holds it until recorded, and does
    not count towards the failure threshold."""
    slot_ms = rt.clock()
    host, port = target.endpoint
    ttl_ms = round(1000 * (target.budget + target.config.timeout + 1))
    lock = EndpointLock(rt.keys.endpoint_lock(host, port), uuid.uuid4().hex, ttl_ms)
    deadline_ms = slot_ms + round(1000 * target.config.timeout)
    try:
        served = rt.modbus.run(
            _poll_locked(rt, target, lock, deadline_ms), timeout=ttl_ms / 1000 + 60
        )
        saving.save(rt, [poll_entry(target.id, slot_ms, kind, served)])
        _save_learned(rt, [(target.id, served.learned)] if served.learned else [])
    finally:
        rt.chains.release([lock])
    return served


async def _poll_locked(
    rt: Runtime, target: PollTarget, lock: EndpointLock, deadline_ms: int
) -> Served:
    if await _take_lock(rt, lock, [], deadline_ms) is None:
        host, port = target.endpoint
        busy = f"endpoint {host}:{port} busy: another poll held its lock"
        return Served(Outcome.SKIPPED, ms_to_dt(rt.clock()), error=busy)
    return await _poll(rt, target)
