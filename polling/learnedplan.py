"""A request plan learnt from a device's refusals: which merged reads a gateway's devices
refuse with exception 2 (illegal data address: a hole in the register map inside the
span), split down until they answer, and the points that no device answers at all.

Pure: the plan a poll uses is computed from it when a process loads a gateway
(`PollTarget.of`), never per poll; `planstore` keeps it in the database for every worker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from .gateways import Gateway, Point
from .plan import Request, plan_requests

#: How long a learnt plan holds before the full plan is tried again (a device's firmware
#: or map may have changed meanwhile): a day, as the issue asks.
RETRY_AFTER = timedelta(days=1)
#: What the history keeps: the newest events (older ones are dropped, not the plan).
EVENTS_KEPT = 20

Span = tuple[int, str, int, int]  # device, register, address, count


@dataclass(frozen=True)
class LearnedPlan:
    #: Digest of the points and limits it was learnt for (`basis_of`).
    basis: str
    #: The requests that answer (and those still to split); None: the full plan.
    spans: tuple[Span, ...] | None = None
    #: Points no device answers: left out of every request, shown, never a failure.
    unavailable: tuple[str, ...] = ()
    learned_at: datetime | None = None
    #: When the full plan is tried again.
    retry_at: datetime | None = None
    #: (when, what) of each change, the newest last.
    events: tuple[tuple[datetime, str], ...] = ()

    def noted(self, at: datetime, what: str) -> LearnedPlan:
        return replace(self, events=(*self.events, (at, what))[-EVENTS_KEPT:])


def basis_of(gateway: Gateway, limits: Sequence[int]) -> str:
    """A digest of what a plan depends on: every point's place and width, the gateway's
    device id and the planning limits. A re-import that moves a point changes it."""
    parts = [str(gateway.device_id), ",".join(map(str, limits))]
    parts += sorted(
        f"{p.name}:{p.device_id}:{p.register}:{p.address}:{p.width}" for p in gateway.points
    )
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def span_of(request: Request) -> Span:
    return request.device_id, request.register, request.address, request.count


def apply(
    full: Sequence[Request], learned: LearnedPlan | None, basis: str, default_device_id: int
) -> tuple[list[Request], tuple[Point, ...]]:
    """The requests a poll reads and the points left out as unavailable: the full plan,
    unless a learnt one for this very configuration (`basis`) holds."""
    if learned is None or learned.basis != basis:
        return list(full), ()
    points = [p for r in full for p in r.points]
    gone = set(learned.unavailable)
    unavailable = tuple(p for p in points if p.name in gone)
    if learned.spans is None:
        return [r for r in _without(full, gone) if r.points], unavailable
    left = [p for p in points if p.name not in gone]
    requests = []
    for device, register, address, count in learned.spans:
        inside = tuple(
            p
            for p in left
            if _device(p, default_device_id) == device
            and p.register == register
            and address <= p.address
            and p.address + p.width <= address + count
        )
        if inside:
            requests.append(Request(device, register, address, count, inside))
            taken = {p.name for p in inside}
            left = [p for p in left if p.name not in taken]
    # Whatever no span covers (cannot happen for a matching basis) is planned afresh.
    requests += plan_requests(left, default_device_id=default_device_id)
    return requests, unavailable


def _without(full: Sequence[Request], gone: set[str]) -> list[Request]:
    """The full plan minus the unavailable points, each request still as wide."""
    return [replace(r, points=tuple(p for p in r.points if p.name not in gone)) for r in full]


def _device(point: Point, default: int) -> int:
    return point.device_id if point.device_id is not None else default


def halves(request: Request) -> tuple[Request, Request]:
    """A refused request of two or more points, split between its points into two."""
    points = sorted(request.points, key=lambda p: (p.address, p.width))
    middle = len(points) // 2
    return _covering(request, points[:middle]), _covering(request, points[middle:])


def _covering(request: Request, points: Sequence[Point]) -> Request:
    start = min(p.address for p in points)
    end = max(p.address + p.width for p in points)
    return Request(request.device_id, request.register, start, end - start, tuple(points))


@dataclass(frozen=True)
class Split:
    """What one poll's splitting found: the requests that answered (in plan order), those
    left for the next poll (its budget ran out), and the points refused alone."""

    answered: tuple[Request, ...]
    pending: tuple[Request, ...]
    unavailable: tuple[Point, ...]
    #: The requests of the plan in use that were refused (for the history).
    refused: tuple[Request, ...]
    #: The error that stopped the splitting before its budget did ('' when none).
    interrupted: str = ""


def learn(
    previous: LearnedPlan | None, basis: str, before: Sequence[Request], split: Split, at: datetime
) -> LearnedPlan:
    """The plan after a poll split refused requests: the answered and pending ones, the
    unavailable points added to those known, and an event saying what changed."""
    continuing = previous is not None and previous.basis == basis
    known = previous.unavailable if continuing and previous is not None else ()
    unavailable = tuple(dict.fromkeys((*known, *(p.name for p in split.unavailable))))
    spans = tuple(sorted(span_of(r) for r in (*split.answered, *split.pending)))
    retry_at = previous.retry_at if continuing and previous and previous.spans else None
    plan = LearnedPlan(
        basis,
        spans,
        unavailable,
        learned_at=at,
        retry_at=retry_at or at + RETRY_AFTER,
        events=previous.events if previous is not None else (),
    )
    return plan.noted(at, describe_change(before, split))


def describe_change(before: Sequence[Request], split: Split) -> str:
    refused = ", ".join(_span_text(r) for r in split.refused)
    after = len(split.answered) + len(split.pending)
    text = f"refused (exception 2): {refused}; {len(before)} requests -> {after}"
    if split.unavailable:
        text += "; unavailable: " + ", ".join(p.name for p in split.unavailable)
    if split.pending:
        why = f"interrupted: {split.interrupted}" if split.interrupted else "poll budget spent"
        text += f"; {len(split.pending)} still to split ({why})"
    return text


def _span_text(request: Request) -> str:
    return f"{request.register} {request.address}..{request.end} of device {request.device_id}"


def reset(plan: LearnedPlan, at: datetime, why: str) -> LearnedPlan:
    """Back to the full plan (the daily retry, or `pollctl gateway replan`), its history
    kept; a refusal teaches it again."""
    cleared = replace(plan, spans=None, unavailable=(), retry_at=None)
    return cleared.noted(at, f"full plan again: {why}")


def unneeded(request: Request) -> list[tuple[int, int]]:
    """The runs of addresses a request reads that none of its points needs, (first, last)."""
    needed: set[int] = set()
    for p in request.points:
        needed.update(range(p.address, p.address + p.width))
    runs: list[tuple[int, int]] = []
    for address in range(request.address, request.end + 1):
        if address in needed:
            continue
        if runs and runs[-1][1] == address - 1:
            runs[-1] = (runs[-1][0], address)
        else:
            runs.append((address, address))
    return runs
