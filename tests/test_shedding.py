"""The shedding rule (polling/shedding.py), by table."""

from __future__ import annotations

import pytest

from polling.checks.overload import Load, judge
from polling.errors import ConfigError
from polling.plan import PollTarget
from polling.settings import Settings
from polling.shedding import Late, is_shed, late_limit_ms, shed_reason, to_shed


@pytest.mark.parametrize(
    ("interval_ms", "limit_s", "share", "expected"),
    [
        (2_000, 0.25, 0.1, 250),  # the floor: 10 % of 2 s is less
        (1_000, 0.25, 0.1, 250),
        (10_000, 0.25, 0.1, 1_000),  # a tenth of the interval
        (60_000, 0.25, 0.1, 6_000),  # 300 ms late on a minute is still worth a poll
        (500, 0.25, 0.5, 250),
        (2_000, 0.5, 0.0, 500),
        (2_000, 0.0, 0.1, None),  # off
    ],
)
def test_late_limit_is_the_larger_of_the_floor_and_the_share(interval_ms, limit_s, share, expected):
    assert late_limit_ms(interval_ms, limit_s, share) == expected


# (slot, interval, limit) of each step, when the batch began -> the indexes shed.
@pytest.mark.parametrize(
    ("steps", "began", "shed"),
    [
        ([(10_000, 2_000, 250)], 10_000, []),  # on time
        ([(10_000, 2_000, 250)], 9_800, []),  # begun before its slot (it waits for it)
        ([(10_000, 2_000, 250)], 10_250, []),  # at the limit: polled
        ([(10_000, 2_000, 250)], 10_251, [0]),
        ([(10_000, 2_000, 250)], 11_999, [0]),  # last moment of the slot
        ([(10_000, 2_000, 250)], 12_000, []),  # the slot has ended: missed, not shed
        ([(10_000, 2_000, None)], 11_000, []),  # shedding off: polled late
        # Each step by its own slot and limit: a batch's slots differ within its window.
        (
            [(10_000, 2_000, 250), (10_090, 2_000, 250), (10_000, 60_000, 6_000)],
            10_300,
            [0],
        ),
        ([(10_000, 1_000, 250), (10_050, 1_000, 250)], 10_700, [0, 1]),
    ],
)
def test_steps_begun_past_their_late_limit_are_shed(steps, began, shed):
    out = to_shed([Late(*s) for s in steps], began)
    assert sorted(out) == shed
    for index, reason in out.items():
        assert is_shed(reason)
        assert f"{(began - steps[index][0]) / 1000:.2f} s after its slot" in reason


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
            "overload: 1,212 of 3,000 polls shed in the last 5 min (40%); "
            "the workers made 6.0 polls/s of 10 offered",
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
