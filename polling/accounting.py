"""Slot accounting: what a batch must record and which chains it advances, given what each
step's begin and read produced and the time. Pure: no clock, no Redis, no database; the
rules of exactly-once accounting in one place, tested by tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .gateways import Point
from .learnedplan import LearnedPlan
from .outcome import Outcome, PollKind
from .records import Entry, MissedRun, PollEntry, PollRecord, reading_row
from .schedule import Grid, ms_to_dt

#: Why a slot was recorded as missed, by what happened (a read's own reason wins).
WHY_FOREIGN = "slot claimed by a chain that was replaced"
WHY_GAP = "the previous poll ended after this slot had passed"


@dataclass(frozen=True)
class Served:
    """What one step's read produced: ok, failed, skipped or missed (with why), or stale
    when its chain was stopped while it waited for the endpoint."""

    outcome: Outcome
    started: datetime | None = None
    finished: datetime | None = None
    error: str | None = None
    #: Each point with its decoded value (an ok poll only).
    values: Sequence[tuple[Point, object]] = ()
    #: The plan this poll learnt from a refusal, to be saved (see polling/planread.py).
    learned: LearnedPlan | None = None


@dataclass(frozen=True)
class Begun:
    """A step as the batch's begin left it."""

    gateway_id: int
    token: str
    slot_ms: int
    grid: Grid
    #: due, or why the step was dropped or is recorded as missed (see `Outcome`).
    outcome: Outcome


@dataclass(frozen=True)
class Advance:
    """Move a chain past a step's slot to `next_ms`; `gap` is recorded once it moved."""

    index: int
    next_ms: int
    gap: MissedRun | None = None


@dataclass(frozen=True)
class Ledger:
    #: What became of each step (as `Begun`, in order).
    outcomes: list[Outcome]
    #: Records to write now.
    entries: list[Entry] = field(default_factory=list)
    #: Chains to advance (compare-and-set), by step index.
    advances: list[Advance] = field(default_factory=list)


def account(begun: Sequence[Begun], served: Mapping[int, Served], now_ms: int) -> Ledger:
    """The record and the advances of a batch. `served` holds the read of every due step
    that was polled or tried, by index; a due step without one was not polled."""
    ledger = Ledger(outcomes=[])
    for index, step in enumerate(begun):
        outcome, entry = _settle(step, served.get(index))
        ledger.outcomes.append(outcome)
        if entry is not None:
            ledger.entries.append(entry)
        if outcome.recorded or outcome is Outcome.REALIGNED:
            ledger.advances.append(_advance(index, step, now_ms))
    return ledger


def _settle(step: Begun, read: Served | None) -> tuple[Outcome, Entry | None]:
    """A step's final outcome and the record it leaves, if any."""
    if step.outcome is Outcome.FOREIGN:
        # A retired chain claimed this slot and may have died holding it.
        return Outcome.MISSED, missed_one(step, WHY_FOREIGN)
    if step.outcome is not Outcome.DUE:
        return step.outcome, None
    if not step.grid.is_slot(step.slot_ms):
        return Outcome.REALIGNED, None  # sent before the interval changed: record nothing
    if read is None:
        return Outcome.MISSED, missed_one(step, "poll task started after the slot ended")
    if read.outcome is Outcome.STALE:
        return Outcome.STALE, None  # stopped while it waited: neither polled nor recorded
    if read.outcome is Outcome.MISSED:
        return Outcome.MISSED, missed_one(step, read.error or "late")
    return read.outcome, poll_entry(step.gateway_id, step.slot_ms, PollKind.SCHEDULED, read)


def _advance(index: int, step: Begun, now_ms: int) -> Advance:
    """The next slot: the following one, or the one in progress when that has passed (a
    realigned chain goes to the slot in progress); the slots in between are missed."""
    grid = step.grid
    if not grid.is_slot(step.slot_ms):
        return Advance(index, grid.containing(now_ms))
    next_ms = grid.following(step.slot_ms, now_ms)
    first, count = grid.between(step.slot_ms, next_ms)
    gap = MissedRun(step.gateway_id, first, count, grid.interval_ms, WHY_GAP) if count else None
    return Advance(index, next_ms, gap)


def missed_one(step: Begun, why: str) -> MissedRun:
    return MissedRun.one(step.gateway_id, step.slot_ms, step.grid.interval_ms, why)


def poll_entry(gateway_id: int, slot_ms: int, kind: PollKind, read: Served) -> PollEntry:
    """The poll-log row and readings of a poll that ran (or was skipped)."""
    finished = read.finished or read.started or ms_to_dt(slot_ms)
    readings = [
        reading_row(gateway_id, point, value, slot_ms, kind, finished)
        for point, value in read.values
    ]
    record = PollRecord(
        gateway_id, slot_ms, kind, read.outcome, read.started, read.finished, read.error
    )
    return PollEntry(record, readings)
