"""The shedding rule (polling/shedding.py), by table."""

from __future__ import annotations

from collections import Counter

import pytest

from polling.checks.overload import Load, judge
from polling.errors import ConfigError
from polling.plan import PollTarget
from polling.settings import Settings
from polling.shedding import (
    LEVEL_MIN,
    Late,
    Shedder,
    first_balance,
    is_shed,
    late_limit_ms,
    shed_reason,
    shed_share,
    turn_reason,
)


@pytest.mark.parametrize(
    ("interval_ms", "limit_s", "share", "expected"),
    [
        (2_000, 0.25, 0.1, 250),  # the floor: 10 % of 2 s is less
        (1_000, 0.25, 0.1, 250),
        (10_000, 0.25, 0.1, 1_000),  # a tenth of the interval
        (30_000, 0.25, 0.1, 3_000),  # 300 ms late on 30 s is still worth a poll
        # A minute or more: never shed (a start takes the slot in progress, late on purpose).
        (60_000, 0.25, 0.1, None),
        (59_999, 0.25, 0.1, 6_000),
        (500, 0.25, 0.5, 250),
        (2_000, 0.5, 0.0, 500),
        (2_000, 0.0, 0.1, None),  # off
    ],
)
def test_late_limit_is_the_larger_of_the_floor_and_the_share(interval_ms, limit_s, share, expected):
    assert late_limit_ms(interval_ms, limit_s, share) == expected


# (slot, interval, limit) of each step (gateway 1, 2, ...), when the batch began -> the
# indexes shed, by a worker with no history: within a quarter of the limit nothing is
# shed in turn (the level stays 0), past the limit every step is.
@pytest.mark.parametrize(
    ("steps", "began", "shed"),
    [
        ([(10_000, 2_000, 250)], 10_000, []),  # on time
        ([(10_000, 2_000, 250)], 9_800, []),  # begun before its slot (it waits for it)
        ([(10_000, 2_000, 250)], 10_062, []),  # up to a quarter of the limit: polled
        ([(10_000, 2_000, 250)], 10_251, [0]),  # past the limit: shed
        ([(10_000, 2_000, 250)], 11_999, [0]),  # last moment of the slot
        ([(10_000, 2_000, 250)], 12_000, []),  # the slot has ended: missed, not shed
        ([(10_000, 2_000, None)], 11_000, []),  # shedding off: polled late
        # Each step by its own slot and limit: a batch's slots differ within its window.
        (
            [(10_000, 2_000, 250), (10_280, 2_000, 250), (10_000, 60_000, 6_000)],
            10_300,
            [0],
        ),
        ([(10_000, 1_000, 250), (10_050, 1_000, 250)], 10_700, [0, 1]),
    ],
)
def test_steps_begun_past_their_late_limit_are_shed(steps, began, shed):
    out = Shedder().to_shed([Late(i + 1, *s) for i, s in enumerate(steps)], began)
    assert sorted(out) == shed
    for index, reason in out.items():
        assert is_shed(reason)
        assert f"{(began - steps[index][0]) / 1000:.2f} s after its slot" in reason


@pytest.mark.parametrize(
    ("lateness", "share"), [(0, 0.0), (62, 0.0), (75, 0.2), (100, 0.6), (125, 1.0), (251, 1.0)]
)
def test_from_a_quarter_of_the_limit_the_worker_sheds_a_share_rising_with_lateness(lateness, share):
    """Batches of a thousand gateways at 2 s, every one begun this late: from the first
    batch, its share of every batch is shed (gateways in turn)."""
    assert shed_share(lateness, 250) == pytest.approx(share)
    shedder = Shedder()
    shed = 0
    for k in range(5):
        slot = 10_000 + k * 2_000
        out = shedder.to_shed([Late(g, slot, 2_000, 250) for g in range(1_000)], slot + lateness)
        shed += len(out)
    assert shedder.level == pytest.approx(share if share >= LEVEL_MIN else 0.0, abs=0.01)
    assert shed == pytest.approx(5 * 1_000 * share, abs=40)


def _run(shedder: Shedder, lateness_of: dict[int, int], slots: range) -> Counter[int]:
    """Gateways at 1 s whose batches begin at the lateness each is given, at every slot
    (by number); the slots shed per gateway."""
    shed: Counter[int] = Counter(dict.fromkeys(lateness_of, 0))
    for k in slots:
        slot = 10_000 + k * 1_000
        for gateway, lateness in lateness_of.items():
            if shedder.to_shed([Late(gateway, slot, 1_000, 250)], slot + lateness):
                shed[gateway] += 1
    return shed


def test_gateways_whose_windows_begin_later_are_shed_no_more_than_the_others():
    """The fleet's rhythm repeats every interval, so the same gateways' batches begin late
    at every slot: half at 70 ms (barely behind), half at 120 ms (all but past half the
    limit). Each is shed the worker's level of its slots all the same."""
    lateness_of = {g: 70 if g % 2 else 120 for g in range(40)}
    shed = _run(Shedder(), lateness_of, range(200))
    mean = sum(shed.values()) / len(shed)
    assert mean == pytest.approx(200 * (0.12 + 0.92) / 2, rel=0.05)
    assert max(shed.values()) <= 1.1 * mean and min(shed.values()) >= 0.9 * mean


def test_a_gateway_shed_past_its_limit_is_spared_its_next_turns():
    """One gateway's batch begins past its limit every other slot (shed each time, and
    paid); the others' at 100 ms. It is shed about as often as they are, not more."""
    shedder = Shedder()
    shed: Counter[int] = Counter()
    for k in range(200):
        slot = 10_000 + k * 1_000
        steps = [Late(g, slot, 1_000, 250) for g in range(20)]
        lateness = [300 if g == 0 and k % 2 else 100 for g in range(20)]
        for g, late in enumerate(lateness):
            shed[g] += bool(shedder.to_shed([steps[g]], slot + late))
    others = [shed[g] for g in range(1, 20)]
    assert shed[0] <= 1.2 * max(others)


def test_when_the_overload_ends_nothing_more_is_shed():
    shedder = Shedder()
    _run(shedder, dict.fromkeys(range(20), 100), range(20))
    assert shedder.level == pytest.approx(0.6)
    # Less late (50 ms: under a quarter of the limit): the level decays within a few windows
    # (about 1.2 turns per gateway while it does), then nothing is shed however the
    # balances stand.
    shed = _run(shedder, dict.fromkeys(range(20), 50), range(20, 30))
    assert shedder.level == 0.0
    assert 0 < sum(shed.values()) <= 2 * 20
    assert sum(_run(shedder, dict.fromkeys(range(20), 50), range(30, 60)).values()) == 0


def test_a_step_begun_within_an_eighth_of_its_limit_is_polled_whatever_the_level():
    """The worker is not behind now (a batch after a lull, a step sent ahead of its slot):
    it polls, however much it shed a moment ago."""
    shedder = Shedder()
    _run(shedder, dict.fromkeys(range(20), 240), range(20))
    assert shedder.level > 0.9
    assert sum(_run(shedder, dict.fromkeys(range(20), 31), range(20, 22)).values()) == 0


def test_a_small_fleet_sheds_in_turn_only_once_its_steps_are_evidence():
    """Three gateways at 1 s whose batches a busy box begins 120 ms late (a level of 0.9
    from six steps in the window): no overload shown, nothing shed short of the limit.
    Twenty such gateways are evidence."""
    assert sum(_run(Shedder(), dict.fromkeys(range(3), 120), range(10)).values()) == 0
    assert sum(_run(Shedder(), dict.fromkeys(range(20), 120), range(10)).values()) > 100


def test_the_loop_sheds_only_past_the_limit():
    shedder = Shedder()
    assert shedder.past_limit(Late(1, 10_000, 1_000, 250), 10_250) is None
    assert is_shed(shedder.past_limit(Late(1, 10_000, 1_000, 250), 10_251) or "")
    assert shedder.past_limit(Late(1, 10_000, 1_000, 250), 11_000) is None  # ended: missed
    assert shedder.past_limit(Late(1, 10_000, 1_000, None), 10_900) is None
    assert first_balance(1) != first_balance(2) and first_balance(1) == first_balance(1)


def test_the_reason_says_how_late_and_the_limit():
    reason = shed_reason(1_300, 250)
    assert reason == "shed: the worker began this poll 1.30 s after its slot (limit 0.25 s)"
    assert is_shed(reason)
    turn = turn_reason(180, 250, 0.333)
    assert turn == (
        "shed: the worker is behind and sheds 33% of late polls in turn; "
        "this one began 0.18 s after its slot (limit 0.25 s)"
    )
    assert is_shed(turn)
    assert not is_shed("endpoint 10.0.0.1:502 busy: another poll held its lock")
    assert not is_shed(None)


def test_settings_bound_the_late_limit_and_share():
    assert Settings.from_env({}, env_file="/nonexistent").late_limit == 0.25
    with pytest.raises(ConfigError, match="POLLING_LATE_LIMIT must be >= 0"):
        Settings.from_env({"POLLING_LATE_LIMIT": "-1"}, env_file="/nonexistent")
    with pytest.raises(ConfigError, match="POLLING_LATE_SHARE must be between 0 and 1"):
        Settings.from_env({"POLLING_LATE_SHARE": "1.5"}, env_file="/nonexistent")
    off = Settings.from_env({"POLLING_LATE_LIMIT": "0"}, env_file="/nonexistent")
    assert off.late_limit == 0


def test_a_poll_target_carries_its_late_limit():
    from polling.gatewayfile import parse_gateways
    from polling.repository import StoredGateway

    (gateway,) = parse_gateways(
        {
            "gateways": [
                {
                    "name": "slow",
                    "host": "127.0.0.1",
                    "interval": 30,
                    "points": [{"name": "p", "address": 0}],
                }
            ]
        }
    )
    stored = StoredGateway(1, gateway, True, True, None, None)
    assert PollTarget.of(stored, Settings()).late_limit_ms == 3_000
    assert PollTarget.of(stored, Settings(late_limit=0)).late_limit_ms is None


@pytest.mark.parametrize(
    ("load", "overloaded", "message"),
    [
        (
            Load(300, 3_000, 1_212, 1_788, 10.0),
            True,
            "overload: 1,212 of 3,000 polls shed in the last 5 min (40.4%); "
            "the workers made 6.0 polls/s of 10 offered",
        ),
        (
            Load(60, 30_000, 30, 29_970, 500.0),
            False,
            "30 of 30,000 polls shed in the last 1 min (0.1%), below 1%: not overloaded; "
            "the workers made 500 polls/s of 500 offered",
        ),
        (
            Load(60, 30_000, 0, 30_000, 500.0),
            False,
            "no polls shed in the last 1 min; the workers made 500 polls/s of 500 offered",
        ),
    ],
)
def test_the_overload_check_says_what_was_shed_and_the_capacity(load, overloaded, message):
    assert judge(load) == (overloaded, message)
