"""Automatic recovery (the breaker) against real Redis, a real database (SQLite and
PostgreSQL) and a simulated device that is away, then back: the fleet clock is the test's,
so the probe delays are stepped through, not waited for."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from polling import pipeline, recovery, service
from polling.gatewayfile import parse_gateways
from polling.models import GatewayRow
from polling.repository import import_gateways
from polling.schedule import dt_to_ms, ms_to_dt
from polling.status import collect_status
from tests.fleet import fleet
from tests.test_service import Sent, poll_rows, setup_fleet


def disabled_by_failures(runtime, port: int, document: dict) -> int:
    """gw0 on `port` (nothing listens there) started and failed over the threshold (3);
    returns the fleet clock (ms) after its last failure."""
    gateway = setup_fleet(runtime, document)["gw0"]
    sent = Sent()
    service.start(runtime, sent)
    steps = sent.calls
    now = 0
    while steps:
        [(_, _, slot)] = steps
        now = slot + 10
        runtime.clock = lambda s=now: s
        steps = pipeline.poll_batch(runtime, steps).successors
    assert runtime.chains.get(gateway.id) is None
    return now


def row(runtime, name: str = "gw0") -> GatewayRow:
    with runtime.sessions() as session:
        return session.query(GatewayRow).filter_by(name=name).one()


def at(runtime, ms: int) -> None:
    runtime.clock = lambda: ms


def test_a_disabled_gateway_is_probed_on_a_growing_delay_and_comes_back(
    runtime, simulate, free_ports
):
    runtime.settings = dataclasses.replace(runtime.settings, recovery_first=60, recovery_max=100)
    [port] = free_ports(1)
    document = fleet([port], [1.0])
    failed_at = disabled_by_failures(runtime, port, document)
    gw = row(runtime)
    assert not gw.enabled and gw.probe_delay_s == 60
    assert abs(dt_to_ms(gw.next_probe_at) - failed_at) <= 60_000 + 1000
    [status] = collect_status(runtime)
    assert (status.colour, status.breaker) == ("red", "open")

    first_probe = dt_to_ms(gw.next_probe_at)
    at(runtime, first_probe - 1)
    assert recovery.claim_due(runtime) == []  # not yet
    at(runtime, first_probe)
    assert recovery.claim_due(runtime) == [gw.id]
    assert recovery.claim_due(runtime) == []  # claimed: a second reconcile sends no probe
    sent = Sent()
    assert recovery.probe(runtime, gw.id, sent).outcome == "failed"  # still away
    gw = row(runtime)
    assert gw.probe_delay_s == 100  # doubled, capped by POLLING_RECOVERY_MAX
    assert dt_to_ms(gw.next_probe_at) == first_probe + 100_000
    assert sent.calls == [] and not gw.enabled

    simulate(document)  # the device is back
    at(runtime, first_probe + 100_000)
    assert recovery.claim_due(runtime) == [gw.id]
    assert recovery.probe(runtime, gw.id, sent).outcome == "ok"
    gw = row(runtime)
    assert gw.enabled and gw.next_probe_at is None and gw.probe_delay_s is None
    assert gw.polling_since == ms_to_dt(first_probe + 100_000)  # the time disabled: a pause
    # Its chain restarts at the next slot, not the one in progress.
    [(gateway_id, token, slot)] = sent.calls
    assert gateway_id == gw.id and first_probe + 100_000 < slot <= first_probe + 101_000
    assert runtime.chains.get(gw.id).token == token
    # Probes are in the poll log, outside slot accounting: the scheduled record is the
    # failures, then the next slot; nothing is written for the slots it spent disabled.
    assert [(r.outcome, r.error is None) for r in poll_rows(runtime, "probe")] == [
        ("failed", False),
        ("ok", True),
    ]
    at(runtime, slot + 10)
    pipeline.poll_batch(runtime, sent.calls)
    assert [r.outcome for r in poll_rows(runtime)] == ["failed"] * 3 + ["ok"]
    [status] = collect_status(runtime)
    assert (status.colour, status.breaker) == ("green", "closed")
    # A reconcile then finds nothing to repair and no gap to record.
    report = service.reconcile(runtime, Sent())
    assert report.missed == 0 and not report.started


def test_an_operator_disable_or_stop_is_never_probed(runtime, free_ports):
    runtime.settings = dataclasses.replace(runtime.settings, recovery_first=60)
    [port] = free_ports(1)
    document = fleet([port], [1.0])
    failed_at = disabled_by_failures(runtime, port, document)
    later = failed_at + 3_600_000
    # Stopped: nobody expects polls, so nothing probes it...
    service.stop(runtime, ["gw0"])
    at(runtime, later)
    assert recovery.claim_due(runtime) == []
    [status] = collect_status(runtime)
    assert status.colour == "grey"
    # ...until it is started again (still disabled by its failures: probed).
    service.start(runtime, Sent())
    assert recovery.claim_due(runtime) == [row(runtime).id]
    # `enabled: false` in the file: the operator's disable replaces the failures'.
    document["gateways"][0]["enabled"] = False
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
    gw = row(runtime)
    assert gw.next_probe_at is None and gw.probe_delay_s is None
    at(runtime, later + 3_600_000)
    assert recovery.claim_due(runtime) == []
    [status] = collect_status(runtime)
    assert (status.colour, status.breaker) == ("grey", "closed")


def test_a_probe_after_the_operator_reenabled_it_does_nothing(runtime, free_ports):
    runtime.settings = dataclasses.replace(runtime.settings, recovery_first=60)
    [port] = free_ports(1)
    failed_at = disabled_by_failures(runtime, port, fleet([port], [1.0]))
    at(runtime, failed_at + 61_000)
    [gateway_id] = recovery.claim_due(runtime)
    service.start(runtime, Sent(), ["gw0"])  # `pollctl start --gateway gw0`
    assert row(runtime).probe_delay_s is None
    assert recovery.probe(runtime, gateway_id, Sent()) is None
    assert poll_rows(runtime, "probe") == []


def test_recovery_off_still_marks_the_gateway_as_disabled_by_failures(runtime, free_ports):
    runtime.settings = dataclasses.replace(runtime.settings, recovery_first=0)
    [port] = free_ports(1)
    failed_at = disabled_by_failures(runtime, port, fleet([port], [1.0]))
    gw = row(runtime)
    assert gw.probe_delay_s == 0 and gw.next_probe_at is None
    at(runtime, failed_at + int(timedelta(days=1).total_seconds() * 1000))
    assert recovery.claim_due(runtime) == []
    [status] = collect_status(runtime)
    assert (status.colour, status.breaker) == ("red", "open")
