"""Slot accounting as a table: what a step's begin and read produced, and the time, give
its outcome, its record and its chain's next slot."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from polling.accounting import WHY_FOREIGN, WHY_GAP, Begun, Served, account
from polling.gateways import Point
from polling.outcome import Outcome
from polling.records import MissedRun, PollEntry
from polling.schedule import Grid

GRID = Grid(anchor_ms=0, interval_ms=1_000)
SLOT = 10_000
T = datetime(2026, 1, 1, tzinfo=UTC)


def step(outcome: Outcome, slot: int = SLOT) -> Begun:
    return Begun(gateway_id=7, token="tok", slot_ms=slot, grid=GRID, outcome=outcome)


@pytest.mark.parametrize(
    ("begun", "read", "now", "outcome", "record", "next_ms"),
    [
        # polled in time: its record, the chain to the next slot
        (Outcome.DUE, Served(Outcome.OK, T, T), 10_300, Outcome.OK, "ok", 11_000),
        (Outcome.DUE, Served(Outcome.FAILED, T, T, "x"), 10_300, Outcome.FAILED, "failed", 11_000),
        (
            Outcome.DUE,
            Served(Outcome.SKIPPED, T, error="busy"),
            10_900,
            Outcome.SKIPPED,
            "skipped",
            11_000,
        ),
        # missed by the read (the slot ended first) or never read (ended before the batch)
        (Outcome.DUE, Served(Outcome.MISSED, error="late"), 10_500, Outcome.MISSED, "late", 11_000),
        (
            Outcome.DUE,
            None,
            12_500,
            Outcome.MISSED,
            "poll task started after the slot ended",
            12_000,
        ),
        # a replaced chain's step holds the claim: missed, and this chain goes on
        (Outcome.FOREIGN, None, 10_100, Outcome.MISSED, WHY_FOREIGN, 11_000),
        # stopped while waiting for the lock, or dropped at begin: nothing, no advance
        (Outcome.DUE, Served(Outcome.STALE), 10_100, Outcome.STALE, None, None),
        (Outcome.STALE, None, 10_100, Outcome.STALE, None, None),
        (Outcome.MOVED, None, 10_100, Outcome.MOVED, None, None),
        (Outcome.DUPLICATE, None, 10_100, Outcome.DUPLICATE, None, None),
    ],
)
def test_a_step_settles_into_one_outcome_one_record_and_one_advance(
    begun, read, now, outcome, record, next_ms
):
    ledger = account([step(begun)], {0: read} if read else {}, now)
    assert ledger.outcomes == [outcome]
    own = [e for e in ledger.entries if getattr(e, "first_ms", SLOT) == SLOT]
    if record is None:
        assert own == []
    elif isinstance(own[0], PollEntry):
        assert own[0].record.outcome == record and own[0].record.slot_ms == SLOT
    else:
        assert own[0] == MissedRun(7, SLOT, 1, 1000, record)
    assert [a.next_ms for a in ledger.advances] == ([] if next_ms is None else [next_ms])


def test_a_late_poll_advances_to_the_slot_in_progress_and_records_the_gap_it_left():
    ledger = account([step(Outcome.DUE)], {0: Served(Outcome.OK, T, T)}, 13_400)
    [advance] = ledger.advances
    assert advance.next_ms == 13_000
    assert advance.gap == MissedRun(7, 11_000, 2, 1000, WHY_GAP)
    assert [type(e) for e in ledger.entries] == [PollEntry]  # the gap waits for the advance


def test_a_step_off_the_grid_realigns_without_a_record():
    ledger = account([step(Outcome.DUE, slot=SLOT + 500)], {}, 10_700)
    assert ledger.outcomes == [Outcome.REALIGNED] and ledger.entries == []
    [advance] = ledger.advances
    assert (advance.next_ms, advance.gap) == (10_000, None)


def test_a_gap_of_any_length_is_one_run_from_the_next_slot_to_the_one_before_the_advance():
    ledger = account([step(Outcome.DUE)], {0: Served(Outcome.OK, T, T)}, SLOT + 20_000_000)
    [advance] = ledger.advances
    assert advance.gap is not None and advance.gap.count == 19_999
    assert advance.gap.first_ms == SLOT + 1000
    assert advance.gap.last_ms == advance.next_ms - 1_000


def test_readings_go_with_an_ok_poll_only():
    point = Point("temp", "holding", 0, "int16", unit="C")
    ok = Served(Outcome.OK, T, T, values=[(point, 21)])
    ledger = account([step(Outcome.DUE)], {0: ok}, 10_100)
    [entry] = ledger.entries
    assert isinstance(entry, PollEntry)
    assert [(r["point"], r["value"], r["unit"]) for r in entry.readings] == [("temp", 21.0, "C")]
