"""The shedding rule (polling/shedding.py), by table."""

from __future__ import annotations

import pytest

from polling.checks.overload import Load, judge
from polling.errors import ConfigError
from polling.plan import PollTarget
from polling.settings import Settings
from polling.shedding import (
    Late,
    is_shed,
    late_limit_ms,
    rotation,
    shed_reason,
    shed_share,
    to_shed,
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
# indexes shed. Between half the limit and the limit a share is shed (see the next test).
@pytest.mark.parametrize(
    ("steps", "began", "shed"),
    [
        ([(10_000, 2_000, 250)], 10_000, []),  # on time
        ([(10_000, 2_000, 250)], 9_800, []),  # begun before its slot (it waits for it)
        ([(10_000, 2_000, 250)], 10_125, []),  # up to half the limit: polled
        ([(10_000, 2_000, 250)], 10_251, [0]),  # past the limit: shed
        ([(10_000, 2_000, 250)], 11_999, [0]),  # last moment of the slot
        ([(10_000, 2_000, 250)], 12_000, []),  # the slot has ended: missed, not shed
        ([(10_000, 2_000, None)], 11_000, []),  # shedding off: polled late
        # Each step by its own slot and limit: a batch's slots differ within its window.
        (
            [(10_000, 2_000, 250), (10_190, 2_000, 250), (10_000, 60_000, 6_000)],
            10_300,
            [0],
        ),
        ([(10_000, 1_000, 250), (10_050, 1_000, 250)], 10_700, [0, 1]),
    ],
)
def test_steps_begun_past_their_late_limit_are_shed(steps, began, shed):
    out = to_shed([Late(i + 1, *s) for i, s in enumerate(steps)], began)
    assert sorted(out) == shed
    for index, reason in out.items():
        assert is_shed(reason)
        assert f"{(began - steps[index][0]) / 1000:.2f} s after its slot" in reason


@pytest.mark.parametrize(
    ("lateness", "share"), [(0, 0.0), (125, 0.0), (150, 0.2), (200, 0.6), (250, 1.0), (251, 1.0)]
)
def test_from_half_the_limit_a_share_rising_with_the_lateness_is_shed(lateness, share):
    assert shed_share(lateness, 250) == pytest.approx(share)
    # That share of a thousand gateways' steps begun so late, and of one gateway's slots.
    batch = [Late(g, 10_000, 2_000, 250) for g in range(1_000)]
    assert len(to_shed(batch, 10_000 + lateness)) == pytest.approx(1_000 * share, abs=50)
    slots = [Late(7, 10_000 + k * 2_000, 2_000, 250) for k in range(1_000)]
    shed = sum(bool(to_shed([s], s.slot_ms + lateness)) for s in slots)
    assert shed == pytest.approx(1_000 * share, abs=50)


def test_the_rotation_picks_other_gateways_at_every_slot():
    """Steps of one window at one lateness: which are shed changes from slot to slot, so
    over many slots every gateway is shed about as often (here half the time)."""
    shed_count = dict.fromkeys(range(50), 0)
    for k in range(200):
        batch = [Late(g, 10_000 + k * 1_000, 1_000, 250) for g in range(50)]
        for index in to_shed(batch, 10_000 + k * 1_000 + 187):  # half way up the ramp
            shed_count[index] += 1
    assert min(shed_count.values()) >= 70 and max(shed_count.values()) <= 130
    assert rotation(1, 10_000) != rotation(1, 11_000) != rotation(2, 10_000)
    assert rotation(1, 10_000) == rotation(1, 10_000)


def test_the_reason_says_how_late_and_the_limit():
    reason = shed_reason(1_300, 250)
    assert reason == "shed: the worker began this poll 1.30 s after its slot (limit 0.25 s)"
    assert is_shed(reason)
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
