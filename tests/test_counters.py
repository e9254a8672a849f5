"""Fleet counters in real Redis: what a saved batch adds, and how `/metrics` reads it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from polling import counters
from polling.keys import Keys
from polling.outcome import Outcome, PollKind
from polling.records import MissedRun, PollEntry, PollRecord
from polling.shedding import shed_reason

T0 = datetime(2026, 12, 4, tzinfo=UTC)


def ms(slot_s: int) -> int:
    return round((T0 + timedelta(seconds=slot_s)).timestamp() * 1000)


def poll(
    gateway_id: int,
    slot_s: int,
    outcome: Outcome,
    late_s: float,
    took_s: float,
    kind=PollKind.SCHEDULED,
):
    started = T0 + timedelta(seconds=slot_s + late_s)
    record = PollRecord(
        gateway_id,
        ms(slot_s),
        kind,
        outcome,
        started,
        started + timedelta(seconds=took_s),
    )
    return PollEntry(record, [])


def test_a_batch_adds_outcomes_histograms_and_the_newest_ok(redis_client):
    keys = Keys(f"c{uuid.uuid4().hex[:8]}")
    counters.count_records(
        redis_client,
        keys,
        [
            poll(1, 10, Outcome.OK, 0.002, 0.02),
            poll(1, 11, Outcome.FAILED, 0.3, 1.5),
            poll(2, 10, Outcome.OK, 7.0, 0.004),
            poll(2, 12, Outcome.OK, 0.0, 0.004, kind=PollKind.MANUAL),  # not a slot's
            MissedRun(2, 0, 150, 1000, "the chain had died"),
        ],
    )
    # A late batch of an older slot must not move the newest ok back.
    counters.count_records(redis_client, keys, [poll(1, 5, Outcome.OK, 0.001, 0.001)])
    counters.count_dropped(redis_client, keys, {Outcome.DUPLICATE: 2, Outcome.OK: 5})
    fleet = counters.read_counters(redis_client, keys)
    assert fleet.polls == {(1, "ok"): 2, (1, "failed"): 1, (2, "ok"): 1, (2, "missed"): 150}
    assert fleet.last_ok == {1: ms(10), 2: ms(10)}
    assert fleet.dropped == {"stale": 0, "claimed": 2, "moved": 0}
    lateness = dict(fleet.lateness.buckets)
    assert (lateness["0.005"], lateness["0.5"], lateness["10.0"], lateness["+Inf"]) == (2, 3, 4, 4)
    assert fleet.lateness.count == 4
    assert abs(fleet.lateness.total - 7.303) < 1e-6
    duration = dict(fleet.duration.buckets)
    assert (duration["0.005"], duration["0.025"], duration["2.5"]) == (2, 3, 4)


def test_nothing_counted_reads_as_zeros(redis_client):
    fleet = counters.read_counters(redis_client, Keys(f"c{uuid.uuid4().hex[:8]}"))
    assert fleet.polls == {} and fleet.last_ok == {}
    assert fleet.lateness.buckets[-1] == ("+Inf", 0) and fleet.duration.count == 0


def test_shed_slots_are_counted_apart_from_other_skipped_ones(redis_client):
    """A shed slot is a skipped one (pollctl_polls_total) and is counted again as shed;
    one skipped because its endpoint was busy is not; neither is a poll made, so neither
    enters the lateness histogram."""
    keys = Keys(f"c{uuid.uuid4().hex[:8]}")
    shed = PollRecord(1, ms(10), PollKind.SCHEDULED, Outcome.SKIPPED, error=shed_reason(900, 250))
    busy = PollRecord(
        2, ms(10), PollKind.SCHEDULED, Outcome.SKIPPED, error="endpoint h:502 busy: held"
    )
    counters.count_records(redis_client, keys, [PollEntry(shed, []), PollEntry(busy, [])])
    fleet = counters.read_counters(redis_client, keys)
    assert fleet.polls == {(1, "skipped"): 1, (2, "skipped"): 1}
    assert fleet.shed == {1: 1}
    assert fleet.lateness.count == 0
