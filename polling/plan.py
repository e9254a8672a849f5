"""How a gateway is polled: its points merged into the fewest reads (or as its devices'
refusals taught, polling/learnedplan.py), and the time one poll may take. Pure: planned
once when a process loads a gateway, never per poll."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .gateways import Gateway, Point
from .repository import StoredGateway
from .schedule import Grid
from .settings import Settings
from .shedding import late_limit_ms
from .transports import serial_endpoint

if TYPE_CHECKING:
    from .learnedplan import LearnedPlan

BIT_REGISTERS = ("coil", "discrete")


@dataclass(frozen=True)
class Request:
    """One Modbus read: `count` registers (or bits) of one kind from one device."""

    device_id: int
    register: str
    address: int
    count: int
    points: tuple[Point, ...] = field(default=(), compare=False)

    @property
    def end(self) -> int:
        """Last address read (inclusive)."""
        return self.address + self.count - 1


def plan_requests(
    points: Iterable[Point],
    *,
    default_device_id: int,
    max_gap: int = 8,
    max_registers: int = 125,
    max_bits: int = 2000,
) -> list[Request]:
    """Group points by (device, register kind) and merge neighbours into one request
    while the span stays within the protocol limit (125 registers or 2000 bits) and
    the unwanted run between them is at most `max_gap` registers or bits."""
    groups: dict[tuple[int, str], list[Point]] = {}
    for point in points:
        device = point.device_id if point.device_id is not None else default_device_id
        groups.setdefault((device, point.register), []).append(point)
    requests = []
    for (device, register), members in sorted(groups.items()):
        limit = max_bits if register in BIT_REGISTERS else max_registers
        gap = max_gap * 16 if register in BIT_REGISTERS else max_gap
        requests.extend(_merge(device, register, members, limit, gap))
    return requests


def _merge(device: int, register: str, points: list[Point], limit: int, gap: int) -> list[Request]:
    out: list[Request] = []
    start = end = -1
    batch: list[Point] = []
    for point in sorted(points, key=lambda p: (p.address, p.width)):
        p_end = point.address + point.width - 1
        fits = batch and point.address - end - 1 <= gap and max(end, p_end) - start + 1 <= limit
        if fits:
            end = max(end, p_end)
            batch.append(point)
            continue
        if batch:
            out.append(Request(device, register, start, end - start + 1, tuple(batch)))
        start, end, batch = point.address, p_end, [point]
    if batch:
        out.append(Request(device, register, start, end - start + 1, tuple(batch)))
    return out


def full_plan(gateway: Gateway, settings: Settings) -> list[Request]:
    """The gateway's points merged as the settings allow, before any learning."""
    return plan_requests(
        gateway.points,
        default_device_id=gateway.device_id,
        max_gap=settings.max_gap,
        max_registers=settings.max_registers,
        max_bits=settings.max_bits,
    )


@dataclass(frozen=True)
class PollTarget(StoredGateway):
    """A stored gateway with what a poll of it needs: its slot grid, its requests, and its
    budgets (seconds and milliseconds)."""

    grid: Grid
    requests: tuple[Request, ...]
    #: Longest one poll may take: connect plus each request at its timeout.
    budget: float
    #: How long a slot claim lives (see `claim_ttl_ms`).
    claim_ttl_ms: int
    #: A step begun later than this after its slot is shed (polling/shedding.py); None: never.
    late_limit_ms: int | None = None
    #: Points left out of every request: no device answers them (see learnedplan).
    unavailable: tuple[Point, ...] = ()
    #: The plan the gateway's refusals taught, as stored (None: it never refused).
    learned: LearnedPlan | None = None
    #: The digest of the configuration a learnt plan must match (`learnedplan.basis_of`).
    basis: str = ""

    @classmethod
    def of(
        cls, stored: StoredGateway, settings: Settings, learned: LearnedPlan | None = None
    ) -> PollTarget:
        from . import learnedplan  # it builds on this module's requests

        config = stored.config
        limits = (settings.max_gap, settings.max_registers, settings.max_bits)
        full = full_plan(config, settings)
        basis = learnedplan.basis_of(config, limits)
        requests, unavailable = learnedplan.apply(full, learned, basis, config.device_id)
        budget = poll_budget(config, len(requests))
        grid = Grid.for_gateway(config.name, config.interval)
        return cls(
            **{name: getattr(stored, name) for name in StoredGateway.__dataclass_fields__},
            grid=grid,
            requests=tuple(requests),
            budget=budget,
            claim_ttl_ms=claim_ttl_ms(config, budget),
            late_limit_ms=late_limit_ms(grid.interval_ms, settings.late_limit, settings.late_share),
            unavailable=unavailable,
            learned=learned,
            basis=basis,
        )

    @property
    def endpoint(self) -> tuple[str, Any]:
        """The line its polls take turns on: host and port, or for a serial bus this
        worker's host and the device (one bus: every device on it waits its turn)."""
        config = self.config
        if config.transport.serial:
            return serial_endpoint(config.transport)
        return config.host, config.port


def poll_budget(gateway: Gateway, n_requests: int) -> float:
    """Longest one poll may take, in seconds: connect plus each request at its timeout."""
    return gateway.timeout * (n_requests + 1) + 0.5


def claim_ttl_ms(gateway: Gateway, budget: float) -> int:
    """How long a slot claim lives: past any copy of the step that could still arrive
    (redelivery after a worker died), and at least a minute."""
    return round(1000 * max(3 * gateway.interval, 2 * budget, 60))
