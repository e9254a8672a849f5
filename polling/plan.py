"""Which registers go into which request: merge a device's points into the fewest reads."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .gateways import Point

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
