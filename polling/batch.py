"""A poll batch: the steps of many chains whose slots start in one window, served by one task.

Each step keeps every guarantee of a single chain step (`service.poll_step`): its token is
checked and its slot claimed, its endpoint's lock is held from before the read until the
record is written, it writes one poll-log row, and only a compare-and-set advances its chain.
What the batch shares is the cost: one Redis call to begin every step and take the locks,
one transaction to record, one Redis call to advance the chains and release the locks, and
the Modbus reads of all endpoints at once on the process's event loop (each poll still
starts at its own slot, and each connection carries one request at a time).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from . import configcache
from .batching import Step
from .chains import BatchStep, LockRequest
from .errors import GatewayTimeout, ModbusError
from .plan import Request
from .poller import claim_ttl_ms, decode_all, poll_budget, requests_for
from .recording import missed_entry, poll_entry, save_many
from .runtime import Runtime
from .schedule import Grid
from .service import MISSED_LIMIT, grid_of, retire_chain
from .store import PollRecord, StoredGateway, reading_row

log = logging.getLogger(__name__)

#: Pause between tries of an endpoint lock another poll holds.
LOCK_RETRY_S = 0.005


@dataclass
class _Item:
    """One step of the batch and what became of it."""

    step: BatchStep
    gateway: StoredGateway
    grid: Grid
    requests: list[Request]
    budget: float
    verdict: str = ""
    #: ok | failed | skipped | missed | stale, once served
    outcome: str | None = None
    started: datetime | None = None
    finished: datetime | None = None
    error: str | None = None
    values: dict[str, object] = field(default_factory=dict)

    @property
    def slot(self) -> int:
        return self.step.slot_ms

    @property
    def endpoint(self) -> tuple[str, int]:
        return self.gateway.config.host, self.gateway.config.port


@dataclass(frozen=True)
class BatchResult:
    #: How many steps ended how: polled, stale, moved, claimed, retired, unknown
    verdicts: dict[str, int]
    #: The successors to send: (gateway id, token, next slot) of every chain advanced.
    next_steps: list[Step]


def poll_batch(rt: Runtime, steps: Sequence[Step]) -> BatchResult:
    verdicts: Counter[str] = Counter()
    items = _items(rt, steps, verdicts)
    now = rt.clock()
    pollable = [i for i in items if i.grid.is_slot(i.slot) and not i.grid.ended(i.slot, now)]
    locks = _lock_requests(rt, items, pollable, now)
    found, states = rt.chains.begin_batch([i.step for i in items], list(locks))
    for item, verdict in zip(items, found, strict=True):
        item.verdict = verdict
        if verdict in ("stale", "moved", "claimed"):
            verdicts[verdict] += 1
            log.info("poll of gateway %s slot %s dropped: %s", item.gateway.id, item.slot, verdict)
    held = [lock for lock, state in zip(locks, states, strict=True) if state == "locked"]
    waiting = {
        lock: locks[lock] for lock, state in zip(locks, states, strict=True) if state == "busy"
    }
    served = {lock: [i for i in group if i.verdict == "go"] for lock, group in locks.items()}
    served = {lock: group for lock, group in served.items() if group}
    if served:
        # Until the last slot starts (never negative: a late batch still gets its budgets),
        # then every poll at its full budget.
        wait_s = max(0, max(i.slot for i in items) - now) / 1000
        budget_s = wait_s + sum(i.budget for i in items)
        # The deadline is kept inside the loop, so a late batch still records and advances
        # its chains; the outer timeout is for a loop that no longer runs at all.
        rt.aio.run(_serve_within(rt, served, waiting, held, budget_s), timeout=budget_s + 60)
    entries, owned = _entries(items, pollable)
    reasons = save_many(rt, entries)
    return _finish(rt, owned, held, reasons, verdicts)


def _items(rt: Runtime, steps: Sequence[Step], verdicts: Counter[str]) -> list[_Item]:
    gateways = configcache.gateways_for_poll(rt, {s[0] for s in steps})
    items = []
    for gateway_id, token, slot_ms in steps:
        if gateway_id not in gateways:
            # Never read by this process and the database is down: the chain stops here
            # and reconcile restarts it (recording the gap) once the database is back.
            log.warning("gateway #%s unknown while the database is down: not polled", gateway_id)
            verdicts["unknown"] += 1
            continue
        gateway = gateways[gateway_id]
        if gateway is None or not gateway.active:
            rt.chains.retire(gateway_id, token)
            verdicts["retired"] += 1
            continue
        requests = requests_for(rt, gateway.config)
        budget = poll_budget(gateway.config, len(requests))
        step = BatchStep(gateway_id, token, slot_ms, claim_ttl_ms(gateway.config, budget))
        items.append(_Item(step, gateway, grid_of(gateway), requests, budget))
    return items


def _lock_requests(
    rt: Runtime, items: list[_Item], pollable: list[_Item], now: int
) -> dict[LockRequest, list[_Item]]:
    """One lock per endpoint with steps to poll, held from the first slot's start until
    the batch is recorded."""
    value = uuid.uuid4().hex
    index = {id(item): n for n, item in enumerate(items)}
    groups: dict[tuple[str, int], list[_Item]] = defaultdict(list)
    for item in pollable:
        groups[item.endpoint].append(item)
    locks = {}
    for (host, port), group in groups.items():
        ttl_ms = max(i.slot for i in group) - now + round(1000 * (sum(i.budget for i in group) + 1))
        steps = tuple(index[id(i)] for i in group)
        lock = LockRequest(rt.keys.endpoint_lock(host, port), value, ttl_ms, steps)
        locks[lock] = sorted(group, key=lambda i: i.slot)
    return locks


async def _serve_within(
    rt: Runtime,
    served: dict[LockRequest, list[_Item]],
    waiting: dict[LockRequest, list[_Item]],
    held: list[LockRequest],
    budget_s: float,
) -> None:
    """Serve every endpoint; a poll still unfinished when the batch's budget runs out (the
    process's Modbus loop fell behind, as under a start of thousands of connections) is
    recorded as missed, not as a device failure that would count towards auto-disable."""
    serving = asyncio.gather(
        *(_serve_endpoint(rt, lock, group, lock in waiting, held) for lock, group in served.items())
    )
    try:
        await asyncio.wait_for(serving, budget_s)
    except TimeoutError:
        why = f"the worker's Modbus loop fell behind: not polled within {budget_s:.1f} s"
        for group in served.values():
            for item in group:
                if item.outcome is None:
                    item.outcome, item.error = "missed", why


async def _serve_endpoint(
    rt: Runtime, lock: LockRequest, group: list[_Item], busy: bool, held: list[LockRequest]
) -> None:
    if busy and not await _take_busy_lock(rt, lock, group):
        return
    if busy:
        held.append(lock)
    for item in group:
        if item.outcome == "stale":
            continue
        await asyncio.sleep(max(0.0, (item.slot - rt.clock()) / 1000))
        now = rt.clock()
        if item.grid.ended(item.slot, now):
            item.outcome = "missed"
            item.error = f"poll task started {(now - item.slot) / 1000:.1f} s after the slot began"
            continue
        await _poll(rt, item)


async def _take_busy_lock(rt: Runtime, lock: LockRequest, group: list[_Item]) -> bool:
    """Wait for a lock another poll holds, at most a timeout and never past the first slot;
    on giving up, the group's slots are recorded as skipped."""
    first = group[0]
    remaining = (first.slot + first.grid.interval_ms - rt.clock()) / 1000
    deadline = rt.clock() + 1000 * min(first.gateway.config.timeout, remaining)
    steps = [i.step for i in group]
    while True:
        current = rt.chains.lock_batch(lock, steps)
        if current is not None:
            for item, ok in zip(group, current, strict=True):
                if not ok:
                    item.outcome = "stale"  # stopped while we waited: neither poll nor record
            return True
        if rt.clock() >= deadline:
            break
        await asyncio.sleep(LOCK_RETRY_S)
    host, port = first.endpoint
    for item in group:
        item.outcome, item.started = "skipped", datetime.now(UTC)
        item.error = f"endpoint {host}:{port} busy: another poll held its lock"
    return False


async def _poll(rt: Runtime, item: _Item) -> None:
    config = item.gateway.config
    item.started = datetime.now(UTC)
    try:
        read = rt.aio.read(config.host, config.port, config.timeout, item.requests)
        try:
            answers = await asyncio.wait_for(read, item.budget)
        except TimeoutError:
            raise GatewayTimeout(
                f"no answer from {config.host}:{config.port} within {item.budget:.1f} s"
            ) from None
        item.values = decode_all(item.requests, answers)
        item.outcome = "ok"
    except ModbusError as exc:
        item.outcome, item.error = "failed", str(exc)
    except Exception as exc:
        # Whatever a device or library does, the slot is recorded and the chain goes on.
        log.exception("unexpected error polling %s", config.name)
        item.outcome, item.error = "failed", f"unexpected error: {type(exc).__name__}: {exc}"
    item.finished = datetime.now(UTC)


def _entries(items: list[_Item], pollable: list[_Item]) -> tuple[list[dict], list[_Item]]:
    """The records to write, and the steps whose chains this batch owns (to advance)."""
    entries = []
    owned = []
    polled = {id(i) for i in pollable}
    for item in items:
        gateway_id, slot = item.gateway.id, item.slot
        if item.verdict == "foreign":
            # A retired chain claimed this slot and may have died holding it.
            entries.append(
                missed_entry(gateway_id, [slot], "slot claimed by a chain that was replaced")
            )
        elif item.verdict != "go" or item.outcome == "stale":
            continue
        elif id(item) not in polled and item.grid.is_slot(slot):
            entries.append(
                missed_entry(gateway_id, [slot], "poll task started after the slot ended")
            )
        elif item.outcome == "missed":
            entries.append(missed_entry(gateway_id, [slot], item.error or "late"))
        elif item.outcome is not None:
            entries.append(_poll_entry(item))
        owned.append(item)
    return entries, owned


def _poll_entry(item: _Item) -> dict:
    finished = item.finished or item.started or datetime.now(UTC)
    points = {p.name: p for p in item.gateway.config.points}
    readings = [
        reading_row(item.gateway.id, points[name], value, item.slot, "scheduled", finished)
        for name, value in item.values.items()
    ]
    record = PollRecord(
        item.gateway.id,
        item.slot,
        "scheduled",
        item.outcome or "failed",
        item.started,
        item.finished,
        item.error,
    )
    if item.error:
        log.info(
            "poll of %s slot %s %s: %s",
            item.gateway.config.name,
            item.slot,
            item.outcome,
            item.error,
        )
    return poll_entry(record, readings)


def _finish(
    rt: Runtime,
    owned: list[_Item],
    held: list[LockRequest],
    reasons: dict[int, str],
    verdicts: Counter[str],
) -> BatchResult:
    """Advance the owned chains and release the locks in one call; record the slots a late
    batch skipped; retire the chains of gateways this batch disabled."""
    now = rt.clock()
    advances = []
    for item in owned:
        if item.gateway.id in reasons:
            continue
        on_grid = item.grid.is_slot(item.slot)
        next_ms = item.grid.following(item.slot, now) if on_grid else item.grid.containing(now)
        advances.append((item, next_ms))
    moved = rt.chains.finish_batch([(i.step, n) for i, n in advances], held)
    next_steps = []
    skipped = []
    for (item, next_ms), ok in zip(advances, moved, strict=True):
        if not ok:
            verdicts["stale"] += 1
            continue
        verdicts["polled"] += 1
        next_steps.append((item.gateway.id, item.step.token, next_ms))
        if item.grid.is_slot(item.slot):
            gap = item.grid.between(item.slot, next_ms, limit=MISSED_LIMIT)
            if gap:
                why = "the previous poll ended after this slot had passed"
                skipped.append(missed_entry(item.gateway.id, gap, why))
    save_many(rt, skipped)
    for item in owned:
        if item.gateway.id in reasons:
            retire_chain(rt, item.gateway.id, item.step.token)
            verdicts["retired"] += 1
    return BatchResult(dict(verdicts), next_steps)
