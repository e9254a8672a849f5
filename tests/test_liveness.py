"""When a chain counts as dead (overdue) or too far ahead: pure rules, tested by cases."""

from __future__ import annotations

from polling.chains import ChainState
from polling.gatewayfile import parse_gateways
from polling.liveness import Overdue, is_ahead
from polling.plan import PollTarget
from polling.repository import StoredGateway
from polling.settings import Settings

GRACE = 1.0
POINTS = [{"name": "a", "address": 0}]  # one request: budget = 2 x timeout + 0.5 s


def targets(ports: list[int], interval: float = 10.0, timeout: float = 2.0) -> list[PollTarget]:
    document = {
        "gateways": [
            {
                "name": f"gw{i}",
                "host": "127.0.0.1",
                "port": port,
                "device_id": i + 1,
                "interval": interval,
                "timeout": timeout,
                "points": POINTS,
            }
            for i, port in enumerate(ports)
        ]
    }
    return [
        PollTarget.of(StoredGateway(i + 1, g, True, True, None, None), Settings())
        for i, g in enumerate(parse_gateways(document))
    ]


def late(gateway: PollTarget, seconds: float) -> tuple[ChainState, int]:
    due = 1_000_000
    return ChainState("t", due, None), due + round(seconds * 1000)


def test_a_gateway_alone_on_its_endpoint_is_overdue_after_its_budget_and_the_grace():
    [gw] = targets([502])
    overdue = Overdue([gw], GRACE)
    assert gw.budget == 4.5
    assert not overdue(gw, *late(gw, 5.4))
    assert overdue(gw, *late(gw, 5.6))


def test_behind_a_shared_endpoint_the_others_polls_are_part_of_the_limit():
    fleet = targets([502, 502, 502])  # three devices behind one RTU bridge
    overdue = Overdue(fleet, GRACE)
    gw = fleet[2]
    # its own budget and the grace, plus the two polls ahead of it (4.5 s each)
    assert not overdue(gw, *late(gw, 5.6))
    assert not overdue(gw, *late(gw, 14.4))
    assert overdue(gw, *late(gw, 14.6))


def test_the_wait_behind_others_is_at_most_one_interval():
    fleet = targets([502] * 5, interval=6.0, timeout=2.0)  # 4 x 4.5 s ahead > 6 s
    overdue = Overdue(fleet, GRACE)
    gw = fleet[0]
    assert not overdue(gw, *late(gw, 4.5 + 6.0 + GRACE - 0.1))
    assert overdue(gw, *late(gw, 4.5 + 6.0 + GRACE + 0.1))


def test_stopped_gateways_do_not_lengthen_the_wait():
    fleet = targets([502, 502])
    stopped = PollTarget.of(StoredGateway(2, fleet[1].config, True, False, None, None), Settings())
    overdue = Overdue([fleet[0], stopped], GRACE)
    assert overdue(fleet[0], *late(fleet[0], 5.6))


def test_a_chain_more_than_an_interval_ahead_is_too_far_ahead():
    [gw] = targets([502], interval=10.0)
    now = 1_000_000
    assert not is_ahead(gw, ChainState("t", now + 11_000, None), now)
    assert is_ahead(gw, ChainState("t", now + 11_001, None), now)
