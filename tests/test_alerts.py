"""Alerts from the database to a local HTTP receiver (apprise's `json://`): one notice for
an alert seen on many runs, again only after the cooldown, none while acknowledged, the
resolution once; a gateway down is one alert; a dead channel never holds up the others.
The clock is a parameter: six hours pass in a line."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from cli import main
from polling.alerts import acknowledge, open_critical_gateways, run
from polling.alerts.delivery import Deliverer, channels_of, read_counts
from polling.alerts.lifecycle import deliverer
from polling.alerts.store import open_alerts
from polling.errors import AlertResolved
from polling.gatewayfile import parse_gateways
from polling.models import GatewayRow, Reading
from polling.repository import import_gateways
from tests.receiver import Receiver, Silent

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def gateway(runtime) -> int:
    """A started gateway `boiler` (interval 10 s) whose points have data rules."""
    document = {
        "gateways": [
            {
                "name": "boiler",
                "host": "127.0.0.1",
                "port": 1502,
                "interval": 10,
                "points": [
                    {"name": "temp", "address": 0, "max": 90, "flatline": 3},
                    {"name": "flow", "address": 1, "flatline": 3},
                ],
            }
        ]
    }
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
        session.execute(update(GatewayRow).values(polling=True, polling_since=T0 - 2 * HOUR))
        return session.query(GatewayRow.id).scalar()


def last_ok(runtime, at: datetime) -> None:
    with runtime.sessions() as session, session.begin():
        session.execute(update(GatewayRow).values(last_ok_at=at))


def sender(runtime, *urls: str, timeout: float = 5.0) -> Deliverer:
    return Deliverer(
        channels_of(list(urls)),
        attempts=2,
        timeout=timeout,
        redis_client=runtime.redis,
        keys=runtime.keys,
    )


def test_an_alert_seen_on_many_runs_is_sent_once_and_again_after_the_cooldown(
    runtime, gateway, receiver
):
    send = sender(runtime, receiver.url)
    last_ok(runtime, T0 - timedelta(minutes=10))
    for minutes in range(0, 60, 10):  # six runs in the first hour
        run(runtime, [], now=T0 + timedelta(minutes=minutes), sender=send)
    assert receiver.titles() == ["pollctl CRITICAL: gateway_offline boiler"]
    with runtime.sessions() as session:
        assert open_critical_gateways(session) == {gateway}
    run(runtime, [], now=T0 + 6 * HOUR - timedelta(seconds=1), sender=send)
    assert len(receiver.titles()) == 1
    run(runtime, [], now=T0 + 6 * HOUR, sender=send)  # the default cooldown: 6 h
    assert receiver.titles()[1] == "pollctl CRITICAL: gateway_offline boiler (again)"
    run(runtime, [], now=T0 + 7 * HOUR, sender=send)
    assert len(receiver.titles()) == 2


def test_an_acknowledged_alert_is_not_sent_again_and_its_resolution_is_sent_once(
    runtime, gateway, receiver, redis_client
):
    feed = redis_client.pubsub(ignore_subscribe_messages=True)
    feed.subscribe(runtime.keys.live("alerts"))
    send = sender(runtime, receiver.url)
    last_ok(runtime, T0 - timedelta(minutes=10))
    run(runtime, [], now=T0, sender=send)
    with runtime.sessions() as session:
        (alert_id,) = [a.id for a in open_alerts(session)]
    acked = acknowledge(runtime, alert_id, note="meter replaced Monday", by="ops")
    assert (acked["state"], acked["ack_note"], acked["ack_by"]) == (
        "acked",
        "meter replaced Monday",
        "ops",
    )
    run(runtime, [], now=T0 + 7 * HOUR, sender=send)  # past the cooldown: silenced
    assert len(receiver.titles()) == 1
    last_ok(runtime, T0 + 7 * HOUR)  # the device answers again
    for seconds in (5, 10, 15):
        run(runtime, [], now=T0 + 7 * HOUR + timedelta(seconds=seconds), sender=send)
    assert receiver.titles()[1:] == ["pollctl RESOLVED: gateway_offline boiler"]
    with runtime.sessions() as session:
        assert open_critical_gateways(session) == set()
    with pytest.raises(AlertResolved):
        acknowledge(runtime, alert_id, note=None, by="ops")
    events = []
    deadline = time.monotonic() + 5
    while len(events) < 3 and time.monotonic() < deadline:
        if message := feed.get_message(timeout=1.0):
            events.append(json.loads(message["data"]))
    feed.close()
    assert [(e["event"], e["alert"]["state"]) for e in events] == [
        ("opened", "new"),
        ("acked", "acked"),
        ("resolved", "resolved"),
    ]


def readings(runtime, gateway: int, values: dict[str, list[float]], start: datetime) -> None:
    with runtime.sessions() as session, session.begin():
        for point, series in values.items():
            for i, value in enumerate(series):
                slot = start + timedelta(seconds=10 * i)
                session.add(
                    Reading(
                        gateway_id=gateway, point=point, slot_at=slot, read_at=slot, value=value
                    )
                )


def test_a_gateway_that_is_down_is_one_alert_not_one_per_point(runtime, gateway, receiver):
    send = sender(runtime, receiver.url)
    # Up, but its temperature is stuck above its max: two alerts of that point.
    readings(
        runtime, gateway, {"temp": [95, 95, 95], "flow": [1, 2, 3]}, T0 - timedelta(seconds=25)
    )
    last_ok(runtime, T0 - timedelta(seconds=5))
    run(runtime, [], now=T0, sender=send)
    assert sorted(receiver.titles()) == [
        "pollctl WARNING: point_flatline boiler/temp",
        "pollctl WARNING: point_max boiler/temp",
    ]
    # Down: one "gateway offline"; the point's alerts are held, neither resolved nor sent.
    readings(runtime, gateway, {"flow": [3, 3, 3]}, T0 + timedelta(seconds=5))
    for minutes in (5, 10):
        run(runtime, [], now=T0 + timedelta(minutes=minutes), sender=send)
    assert receiver.titles()[2:] == ["pollctl CRITICAL: gateway_offline boiler"]
    # Back, its readings moving again: offline and the flat-line resolve, the max stays.
    readings(runtime, gateway, {"temp": [95, 94, 96]}, T0 + timedelta(minutes=11))
    last_ok(runtime, T0 + timedelta(minutes=11, seconds=20))
    run(runtime, [], now=T0 + timedelta(minutes=11, seconds=25), sender=send)
    assert sorted(receiver.titles()[3:]) == [
        "pollctl RESOLVED: gateway_offline boiler",
        "pollctl RESOLVED: point_flatline boiler/temp",
    ]


def test_a_failing_channel_never_holds_up_a_working_one(runtime, gateway, receiver, free_ports):
    silent = Silent()
    closed = f"json://127.0.0.1:{free_ports(1)[0]}/hook"
    send = sender(runtime, closed, silent.url, receiver.url, timeout=1.5)
    last_ok(runtime, T0 - timedelta(minutes=10))
    began = time.monotonic()
    report = run(runtime, [], now=T0, sender=send)
    took = time.monotonic() - began
    silent.close()
    assert took < 2.5, f"the run took {took:.1f} s, past its 1.5 s bound"
    assert receiver.titles() == ["pollctl CRITICAL: gateway_offline boiler"]
    assert report is not None and (report.opened, report.undelivered) == (1, 0)
    counts = read_counts(runtime.redis, runtime.keys)
    label = lambda url: url.removeprefix("json://").split("/")[0]  # noqa: E731
    assert counts == {
        (f"json://{label(closed)}", "failed"): 1,
        (f"json://{label(silent.url)}", "failed"): 1,
        (f"json://{label(receiver.url)}", "ok"): 1,
    }
    from webapi.metrics import FleetCollector

    (family,) = FleetCollector(runtime, None)._alerts()  # type: ignore[arg-type]
    assert family.name == "pollctl_alert_notifications"
    assert {tuple(s.labels.values()) for s in family.samples if s.name.endswith("_total")} == {
        (channel, outcome) for channel, outcome in counts
    }


def test_nothing_delivered_is_tried_again_at_the_next_run(runtime, gateway, receiver, free_ports):
    last_ok(runtime, T0 - timedelta(minutes=10))
    closed = f"json://127.0.0.1:{free_ports(1)[0]}/hook"
    report = run(runtime, [], now=T0, sender=sender(runtime, closed, timeout=1.0))
    assert report is not None and report.undelivered == 1
    run(runtime, [], now=T0 + timedelta(minutes=1), sender=sender(runtime, receiver.url))
    assert receiver.titles() == ["pollctl CRITICAL: gateway_offline boiler"]


def test_the_cli_lists_acknowledges_and_tests(runtime, gateway, receiver, env, free_ports):
    last_ok(runtime, T0 - timedelta(minutes=10))
    run(runtime, [], now=T0, sender=sender(runtime, receiver.url))
    cli = CliRunner()
    listed = cli.invoke(main, ["alerts"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "gateway_offline" in listed.output and "boiler" in listed.output
    alerts = json.loads(cli.invoke(main, ["alerts", "--open", "--json"], env=env).output)
    assert [(a["rule"], a["state"]) for a in alerts] == [("gateway_offline", "new")]
    acked = cli.invoke(main, ["alerts", "ack", str(alerts[0]["id"]), "--note", "on it"], env=env)
    assert acked.exit_code == 0 and "acknowledged alert" in acked.output, acked.output
    missing = cli.invoke(main, ["alerts", "ack", "999999"], env=env)
    assert (missing.exit_code, missing.output) == (1, "error: alert 999999: no such alert\n")
    closed = f"json://127.0.0.1:{free_ports(1)[0]}/hook"
    urls = {"POLLING_ALERT_URLS": f"{receiver.url}, {closed}", "POLLING_ALERT_TIMEOUT": "2"}
    tested = cli.invoke(main, ["alerts", "test"], env={**env, **urls})
    assert tested.exit_code == 1, tested.output
    assert f"json://127.0.0.1:{receiver.port}: sent" in tested.output
    assert "FAILED" in tested.output
    assert receiver.titles()[-1] == "pollctl test notification"
    bad = cli.invoke(main, ["alerts", "test"], env={**env, "POLLING_ALERT_URLS": "nope://x"})
    assert (bad.exit_code, bad.output) == (
        1,
        "error: POLLING_ALERT_URLS: nope://... is not a URL apprise can use\n",
    )


def test_a_url_apprise_cannot_use_is_left_out_and_the_others_deliver(runtime, receiver):
    settings = replace(runtime.settings, alert_urls=f"nope://secret {receiver.url}")
    channels = deliverer(replace(runtime, settings=settings)).channels
    assert [c.label for c in channels] == [f"json://127.0.0.1:{receiver.port}"]


def test_validate_warns_of_a_url_apprise_cannot_use(runtime, receiver):
    # Left out at every diagnostics run and only logged: `pollctl validate` said nothing,
    # so an operator learnt of a typo'd channel from the alert that never came.
    from polling.checks.alertchannels import check_alert_channels
    from polling.checks.base import Context

    assert check_alert_channels(Context(runtime)).status == "healthy"
    settings = replace(runtime.settings, alert_urls=f"nope://secret {receiver.url}")
    result = check_alert_channels(Context(replace(runtime, settings=settings)))
    assert (result.component, result.status) == ("alerts", "warning")
    assert "nope://... is not a URL apprise can use" in result.message
    assert "secret" not in result.message + str(result.details)
