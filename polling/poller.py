"""One poll of one gateway: take the endpoint lock, read, decode, record."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis.exceptions import LockError

from . import codec
from .errors import ModbusError
from .gateways import Gateway, Point
from .plan import BIT_REGISTERS, Request, plan_requests
from .recording import poll_entry, save
from .runtime import Runtime
from .store import PollRecord, StoredGateway, ms_to_dt, reading_row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PollOutcome:
    #: ok | failed | skipped, or "stale" when the chain was retired while we waited
    outcome: str
    error: str | None = None
    values: dict[str, object] = field(default_factory=dict)
    disabled_reason: str | None = None


def requests_for(rt: Runtime, gateway: Gateway) -> list[Request]:
    """The planned requests of a gateway's register map. Planning is pure, and every poll,
    reconcile and check asks for it: each map is planned once per process, found again
    by identity (hashing and comparing ten points would cost a third of planning them)."""
    s = rt.settings
    key = (id(gateway.points), gateway.device_id, s.max_gap, s.max_registers, s.max_bits)
    known = _PLANNED.get(key)
    if known is not None and known[0] is gateway.points:
        return list(known[1])
    if len(_PLANNED) >= _PLANNED_MAX:
        _PLANNED.clear()  # configurations were reloaded many times over: start afresh
    planned = plan_requests(
        gateway.points,
        default_device_id=gateway.device_id,
        max_gap=s.max_gap,
        max_registers=s.max_registers,
        max_bits=s.max_bits,
    )
    # The points are kept with their plan, so their id cannot be reused while cached.
    _PLANNED[key] = (gateway.points, tuple(planned))
    return planned


_PLANNED: dict[tuple[int, ...], tuple[tuple[Point, ...], tuple[Request, ...]]] = {}
_PLANNED_MAX = 1 << 17


def poll_budget(gateway: Gateway, n_requests: int) -> float:
    """Longest one poll may take, in seconds: connect plus each request at its timeout."""
    return gateway.timeout * (n_requests + 1) + 0.5


def claim_ttl_ms(gateway: Gateway, budget: float) -> int:
    """How long a slot claim lives: past any copy of the step that could still arrive
    (redelivery after a worker died), and at least a minute."""
    return round(1000 * max(3 * gateway.interval, 2 * budget, 60))


def decode_all(requests: Sequence[Request], answers: Sequence[Sequence[int]]) -> dict[str, object]:
    values: dict[str, object] = {}
    for request, words in zip(requests, answers, strict=True):
        for point in request.points:
            start = point.address - request.address
            if request.register in BIT_REGISTERS:
                values[point.name] = bool(words[start])
                continue
            raw = codec.decode(words[start : start + point.width], point.type, point.order)
            values[point.name] = codec.scaled(raw, point.scale, point.offset)
    return values


def execute_poll(
    rt: Runtime,
    gateway: StoredGateway,
    slot_ms: int,
    *,
    kind: str = "scheduled",
    token: str | None = None,
    lock_wait: float | None = None,
    requests: list[Request] | None = None,
) -> PollOutcome:
    """Poll `gateway` for `slot_ms` under its endpoint lock and record the result.
    With a `token`, the chain is checked again once the lock is held, so nothing polls
    after `pollctl stop` has retired the token and waited for the lock."""
    config = gateway.config
    if requests is None:
        requests = requests_for(rt, config)
    budget = poll_budget(config, len(requests))
    lock = rt.redis.lock(
        rt.keys.endpoint_lock(config.host, config.port),
        timeout=budget,
        sleep=0.005,
        blocking_timeout=config.timeout if lock_wait is None else lock_wait,
        thread_local=False,
    )
    started = datetime.now(UTC)
    if not lock.acquire():
        error = f"endpoint {config.host}:{config.port} busy: another poll held its lock"
        return _record(rt, gateway, slot_ms, kind, "skipped", started, error, {})
    # The lock is held until the poll is recorded, so `pollctl stop` (which waits for it)
    # returns only when nothing of this gateway is being polled or written.
    try:
        if token is not None and not rt.chains.is_current(gateway.id, token):
            return PollOutcome("stale")
        try:
            answers = rt.modbus.read(config.host, config.port, config.timeout, requests)
            values = decode_all(requests, answers)
        except ModbusError as exc:
            return _record(rt, gateway, slot_ms, kind, "failed", started, str(exc), {})
        except Exception as exc:
            # Whatever a device or library does, the slot is recorded and the chain goes on.
            log.exception("unexpected error polling %s", config.name)
            rt.modbus.discard(config.host, config.port)
            error = f"unexpected error: {type(exc).__name__}: {exc}"
            return _record(rt, gateway, slot_ms, kind, "failed", started, error, {})
        return _record(rt, gateway, slot_ms, kind, "ok", started, None, values)
    finally:
        try:
            lock.release()
        except LockError:
            log.warning("lock of %s:%s expired during a poll", config.host, config.port)


def _record(
    rt: Runtime,
    gateway: StoredGateway,
    slot_ms: int,
    kind: str,
    outcome: str,
    started: datetime,
    error: str | None,
    values: dict[str, object],
) -> PollOutcome:
    finished = datetime.now(UTC)
    points = {p.name: p for p in gateway.config.points}
    readings = [
        reading_row(gateway.id, points[name], value, slot_ms, kind, finished)
        for name, value in values.items()
    ]
    record = PollRecord(gateway.id, slot_ms, kind, outcome, started, finished, error)
    reason = save(rt, poll_entry(record, readings))
    if error:
        log.info("poll of %s at %s %s: %s", gateway.config.name, ms_to_dt(slot_ms), outcome, error)
    return PollOutcome(outcome, error, values, reason)
