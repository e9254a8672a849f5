"""A gateway's state beyond its configuration: the newest success kept by the batch write
(real databases) and the colour judged from it (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from polling import saving
from polling.colour import Colour, ColourRules, GatewayState, colour_of
from polling.models import GatewayRow
from polling.outcome import Outcome, PollKind
from polling.records import PollEntry, PollRecord
from tests.fleet import fleet
from tests.test_service import setup_fleet

SLOT = 1_700_000_000_000
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def poll(gateway_id: int, slot_ms: int, outcome: Outcome, at: datetime, kind=PollKind.SCHEDULED):
    return PollEntry(PollRecord(gateway_id, slot_ms, kind, outcome, at, at, None), [])


def last_ok(runtime, gateway_id: int) -> datetime | None:
    with runtime.sessions() as session:
        return session.get(GatewayRow, gateway_id).last_ok_at


def test_the_batch_write_keeps_the_newest_success_and_never_moves_it_back(runtime, free_ports):
    gateways = setup_fleet(runtime, fleet(free_ports(2), [1.0, 1.0]))
    gw0, gw1 = gateways["gw0"].id, gateways["gw1"].id
    t = datetime.now(UTC).replace(microsecond=0)
    saving.save(
        runtime,
        [
            poll(gw0, SLOT, Outcome.OK, t),
            poll(gw0, SLOT + 1000, Outcome.OK, t + timedelta(seconds=1)),
            poll(gw1, SLOT, Outcome.FAILED, t),
        ],
    )
    assert last_ok(runtime, gw0) == t + timedelta(seconds=1)
    assert last_ok(runtime, gw1) is None  # a failure is not a success
    # An older success flushed late from the buffer, and a newer failure: neither moves it.
    saving.save(
        runtime,
        [
            poll(gw0, SLOT - 5000, Outcome.OK, t - timedelta(seconds=5)),
            poll(gw0, SLOT + 2000, Outcome.FAILED, t + timedelta(seconds=2)),
        ],
    )
    assert last_ok(runtime, gw0) == t + timedelta(seconds=1)
    # A manual poll's success is a success too.
    saving.save(runtime, [poll(gw1, SLOT, Outcome.OK, t, kind=PollKind.MANUAL)])
    assert last_ok(runtime, gw1) == t


def state(**changes) -> GatewayState:
    base = dict(
        polling=True,
        enabled=True,
        disabled_by_failures=False,
        interval_s=10.0,
        last_ok_at=NOW - timedelta(seconds=5),
        polling_since=NOW - timedelta(hours=1),
        failure_rate=0.0,
        critical_alert=False,
    )
    return GatewayState(**{**base, **changes})


@pytest.mark.parametrize(
    ("changes", "colour"),
    [
        ({}, Colour.GREEN),
        ({"polling": False}, Colour.GREY),
        ({"enabled": False}, Colour.GREY),  # the operator's enabled: false
        ({"enabled": False, "disabled_by_failures": True}, Colour.RED),
        ({"critical_alert": True}, Colour.RED),
        ({"polling": False, "critical_alert": True}, Colour.GREY),  # stopped: nobody expects polls
        ({"last_ok_at": NOW - timedelta(seconds=100)}, Colour.RED),  # 10 intervals
        ({"last_ok_at": NOW - timedelta(seconds=99)}, Colour.YELLOW),
        ({"last_ok_at": NOW - timedelta(seconds=20)}, Colour.YELLOW),  # 2 intervals
        ({"last_ok_at": NOW - timedelta(seconds=19)}, Colour.GREEN),
        ({"failure_rate": 0.26}, Colour.YELLOW),
        ({"failure_rate": 0.25}, Colour.GREEN),
        # Never polled: judged from its start, so a fresh start is not offline at once...
        ({"last_ok_at": None, "polling_since": NOW - timedelta(seconds=3)}, Colour.GREEN),
        # ...but one that never answered goes red.
        ({"last_ok_at": None, "polling_since": NOW - timedelta(minutes=5)}, Colour.RED),
        # An old success before a recent restart: judged from the restart.
        (
            {"last_ok_at": NOW - timedelta(days=1), "polling_since": NOW - timedelta(seconds=5)},
            Colour.GREEN,
        ),
    ],
)
def test_colour(changes, colour):
    assert colour_of(state(**changes), NOW) == colour


def test_colour_thresholds_are_settings():
    strict = ColourRules(red_intervals=3, yellow_intervals=1, yellow_failure_rate=0.1)
    assert colour_of(state(last_ok_at=NOW - timedelta(seconds=30)), NOW, strict) == Colour.RED
    assert colour_of(state(failure_rate=0.2), NOW, strict) == Colour.YELLOW
