import itertools

import pytest

from polling.schedule import Grid, anchor_for, to_ms


@pytest.mark.parametrize(
    ("t_ms", "index", "start"),
    [
        (0, -1, -700),  # anchor 300, interval 1000: t=0 lies in slot -1
        (300, 0, 300),
        (1299, 0, 300),
        (1300, 1, 1300),
        (10_299, 9, 9_300),
    ],
)
def test_slot_containing_a_time(t_ms, index, start):
    grid = Grid(anchor_ms=300, interval_ms=1000)
    assert grid.index(t_ms) == index
    assert grid.containing(t_ms) == start


def test_fractional_intervals_do_not_drift():
    grid = Grid.for_gateway("x", 0.1)
    assert grid.interval_ms == 100
    slot = grid.containing(1_700_000_000_000)
    starts = [grid.start(grid.index(slot) + k) for k in range(10_000)]
    assert all(b - a == 100 for a, b in itertools.pairwise(starts))
    assert all(grid.is_slot(s) for s in starts)


@pytest.mark.parametrize(
    ("slot", "now", "expected"),
    [
        (1000, 1500, 2000),  # on time: the next slot
        (1000, 1999, 2000),
        (1000, 2000, 2000),  # the next slot just began: poll it
        (1000, 2500, 2000),  # late within the next slot: still poll it
        (1000, 3100, 3000),  # the next slot has passed: skip to the one in progress
        (1000, 9999, 9000),
    ],
)
def test_following_slot_is_never_one_that_passed(slot, now, expected):
    assert Grid(0, 1000).following(slot, now) == expected


def test_slots_between_as_a_range():
    grid = Grid(0, 1000)
    assert grid.between(1000, 2000) == (2000, 0)
    assert grid.between(1000, 5000) == (2000, 3)
    assert grid.between(1000, 1000 + 86_400_000) == (2000, 86_399)


def test_slot_ends_after_one_interval():
    grid = Grid(0, 1000)
    assert not grid.ended(1000, 1999)
    assert grid.ended(1000, 2000)


def test_anchor_is_stable_and_spread():
    assert anchor_for("meter-1", 10_000) == anchor_for("meter-1", 10_000)
    anchors = {anchor_for(f"meter-{i}", 10_000) for i in range(1000)}
    assert len(anchors) > 900  # a thousand gateways do not fire in the same millisecond
    assert all(0 <= a < 10_000 for a in anchors)


def test_to_ms_rounds_fractions():
    assert to_ms(0.001) == 1
    assert to_ms(1.5) == 1500


@pytest.mark.parametrize(
    ("now", "first"), [(60_000, 60_000), (90_000, 60_000), (90_001, 120_000), (119_999, 120_000)]
)
def test_a_long_interval_chain_starts_in_the_current_slot_only_while_it_is_young(now, first):
    assert Grid(0, 60_000).starting(now) == first


@pytest.mark.parametrize(("born", "first"), [(59_000, 60_000), (60_000, 60_000), (60_001, 120_000)])
def test_a_long_interval_chain_never_starts_in_a_slot_older_than_redis_state(born, first):
    # A slot that began before Redis's state did may have a poll in flight under lost claims.
    assert Grid(0, 60_000).starting(70_000, not_before_ms=born) == first


@pytest.mark.parametrize("now", [1000, 1001, 1500, 1999])
def test_a_short_interval_chain_starts_at_the_next_slot(now):
    # Starting a fleet at 10 s must not make half its first polls due at once.
    assert Grid(0, 1000).starting(now) == 2000
