"""`/metrics`' poll counters: per gateway unless POLLING_METRICS_PER_GATEWAY=false, and
fleet-wide either way, from the counters in real Redis and the gateways in the database."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import select

from polling import counters
from polling.errors import ConfigError
from polling.gatewayfile import parse_gateways
from polling.models import GatewayRow
from polling.outcome import Outcome, PollKind
from polling.records import PollEntry, PollRecord
from polling.repository import import_gateways
from polling.settings import Settings
from polling.shedding import shed_reason
from tests.fleet import fleet
from webapi.metrics import FleetCollector
from workers.broker import RedisQueues

SLOT_MS = 1_796_000_000_000
GONE = 99_999  # a gateway counted, then deleted
PER_GATEWAY = ("pollctl_polls", "pollctl_polls_shed", "pollctl_gateway_last_ok_timestamp_seconds")


def scrape(runtime) -> dict[str, set[tuple[tuple[tuple[str, str], ...], float]]]:
    """Each poll family's samples: (sorted labels, value)."""
    collector = FleetCollector(runtime, RedisQueues(runtime.redis, runtime.keys.broker))
    return {
        family.name: {(tuple(sorted(s.labels.items())), s.value) for s in family.samples}
        for family in collector._polls(_names(runtime))
    }


def _names(runtime) -> dict[int, str]:
    with runtime.sessions() as session:
        return dict(session.execute(select(GatewayRow.id, GatewayRow.name)).tuples().all())


def record(gateway_id: int, outcome: Outcome, error: str | None = None) -> PollEntry:
    slot = SLOT_MS + 1000 * gateway_id + (outcome is Outcome.OK)  # one slot each
    return PollEntry(PollRecord(gateway_id, slot, PollKind.SCHEDULED, outcome, error=error), [])


def test_poll_counts_per_gateway_can_be_left_out_and_the_fleets_stay(runtime, free_ports):
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(fleet(free_ports(2), [1, 1])))
    ids = {name: i for i, name in _names(runtime).items()}
    gw0, gw1 = ids["gw0"], ids["gw1"]
    shed = shed_reason(900, 250)
    entries = [
        record(gw0, Outcome.OK),
        record(gw0, Outcome.FAILED),
        record(gw1, Outcome.SKIPPED, shed),
        record(GONE, Outcome.FAILED),
    ]
    counters.count_records(runtime.redis, runtime.keys, entries)

    fleet_series = {
        "pollctl_fleet_polls": {
            ((("outcome", "ok"),), 1),
            ((("outcome", "failed"),), 2),
            ((("outcome", "skipped"),), 1),
        },
        "pollctl_fleet_polls_shed": {((), 1)},
    }
    each = scrape(runtime)
    assert each["pollctl_polls"] == {
        ((("gateway", "gw0"), ("outcome", "ok")), 1),
        ((("gateway", "gw0"), ("outcome", "failed")), 1),
        ((("gateway", "gw1"), ("outcome", "skipped")), 1),
    }
    assert each["pollctl_polls_shed"] == {((("gateway", "gw1"),), 1)}
    assert {labels for labels, _ in each["pollctl_gateway_last_ok_timestamp_seconds"]} == {
        (("gateway", "gw0"),)
    }
    assert {name: each[name] for name in fleet_series} == fleet_series

    runtime.settings = replace(runtime.settings, metrics_per_gateway=False)
    fleet_only = scrape(runtime)
    for name in PER_GATEWAY:  # the families stay, empty
        assert fleet_only[name] == set(), name
    assert {name: fleet_only[name] for name in fleet_series} == fleet_series


@pytest.mark.parametrize(("raw", "value"), [("false", False), ("0", False), ("On", True)])
def test_a_yes_no_setting_takes_the_usual_words(raw, value):
    settings = Settings.from_env({"POLLING_METRICS_PER_GATEWAY": raw}, env_file="/nonexistent")
    assert settings.metrics_per_gateway is value


def test_a_yes_no_setting_refuses_anything_else_in_one_line():
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"POLLING_METRICS_PER_GATEWAY": "nah"}, env_file="/nonexistent")
    assert str(refused.value) == "POLLING_METRICS_PER_GATEWAY='nah': expected true or false"
