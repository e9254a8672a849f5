"""`pollctl poll-now` and `pollctl write` of a serial gateway go through a worker of its
site, over the worker's own connection to the line (a serial port has room for one client,
and it is on the worker's host); with no worker to take them, one line and nothing sent,
and the command never runs later. With `--via-worker`, a TCP gateway's go the same way."""

from __future__ import annotations

import re
from functools import partial

import pytest
from click.testing import CliRunner

from cli import main
from polling import service, writes
from polling.gatewayfile import parse_gateways
from polling.repository import import_gateways
from tests.faultproxy import FaultProxy
from tests.faults.harness import wait_until
from tests.processes import Worker
from tests.test_service import poll_rows, setup_fleet
from workers.senders import send_poll

pytestmark = [pytest.mark.e2e]

POINT = {"name": "setpoint", "register": "holding", "address": 4, "type": "int16", "unit": "C"}


def _document(client_end: str) -> dict:
    return {
        "gateways": [
            {"name": "boiler", "transport": "serial", "port": client_end, "device_id": 3,
             "site": "plant", "interval": 60, "timeout": 1, "points": [POINT]},
        ]
    }  # fmt: skip


@pytest.mark.long
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_poll_now_and_write_of_a_serial_gateway_go_through_its_sites_worker(
    runtime, env, simulate, pty_pair, tmp_path
):
    server_end, client_end = pty_pair
    document = _document(client_end)
    sim = simulate(document, transport="serial", serial_port=server_end)
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
    env = {**env, "POLLING_CANARY_TIMEOUT": "3"}
    runner = CliRunner()

    # No worker serves `plant` yet: one line, nothing sent, and the command is given up.
    refused = runner.invoke(main, ["write", "--gateway", "boiler", "--point", "setpoint",
                                   "--yes", "--", "-7"], env=env)  # fmt: skip
    assert refused.exit_code == 1
    assert "no worker of site plant took the command within 5 s: nothing was sent" in (
        refused.output
    )
    worker = Worker({**env, "POLLING_SITES": "plant"}, tmp_path / "plant.log", 4,
                    queues="polling", hostname="w-plant@localhost")  # fmt: skip
    try:
        worker.wait_ready()
        polled = runner.invoke(main, ["poll-now", "--gateway", "boiler"], env=env)
        assert polled.exit_code == 0, polled.output
        assert polled.output.startswith("boiler: ok\n  setpoint = "), polled.output
        wrote = runner.invoke(main, ["write", "--gateway", "boiler", "--point", "setpoint",
                                     "42", "--yes"], env=env)  # fmt: skip
        assert wrote.exit_code == 0, wrote.output
        assert wrote.output.endswith(" -> 42\n"), wrote.output
        again = runner.invoke(main, ["poll-now", "--gateway", "boiler"], env=env)
        assert "setpoint = 42 C" in again.output, again.output
        writes = [c for _, _, c, _ in list(sim.traffic.reads) if c in (6, 16)]
        # The refused write never reached the device, not even once the worker came.
        assert len(writes) == 1, writes
        listed = runner.invoke(main, ["writes", "--gateway", "boiler"], env=env)
        # One row (under the header and its rule), the write of 42: the refused -7 is not
        # recorded. Columns: at (date, time), user, gateway, point, old, new, ...
        [row] = listed.output.splitlines()[2:]
        assert row.split()[3:5] == ["boiler", "setpoint"] and row.split()[6] == "42", row
    finally:
        worker.stop()


@pytest.mark.long
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_poll_now_and_write_via_worker_of_a_tcp_gateway_use_the_workers_connection(
    runtime, env, simulate, free_ports, tmp_path
):
    """The device sits behind a pass-through proxy that counts connections: the worker's
    pool keeps one, so a poll, a write and a poll via the worker make one connection in
    all, and the command line never connects; a write without --via-worker makes its own."""
    (device_port,) = free_ports(1)
    entry = {"name": "meter", "host": "127.0.0.1", "site": "plant", "interval": 60,
             "timeout": 1, "points": [POINT]}  # fmt: skip
    sim = simulate({"gateways": [{**entry, "port": device_port}]})
    proxy = FaultProxy(("127.0.0.1", device_port)).start()
    document = {"gateways": [{**entry, "port": proxy.port}]}
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))

    def sent() -> list[tuple[int, int]]:  # (function, address) of each write served
        return [(c, a) for _, _, c, a in list(sim.traffic.reads) if c in (6, 16)]

    runner = CliRunner()

    def pollctl(*args: str, sites: str = "default") -> str:
        result = runner.invoke(main, list(args), env={**env, "POLLING_SITES": sites})
        assert result.exit_code == 0, result.output + str(result.exception)
        return result.output

    worker = Worker({**env, "POLLING_SITES": "plant"}, tmp_path / "plant.log", 4,
                    queues="polling", hostname="w-plant@localhost")  # fmt: skip
    try:
        worker.wait_ready()
        assert pollctl("poll-now", "--gateway", "meter", "--via-worker").startswith(
            "meter: ok\n  setpoint = "
        )
        wrote = pollctl("write", "--gateway", "meter", "--point", "setpoint", "--via-worker",
                        "--yes", "--", "-42")  # fmt: skip
        old = re.fullmatch(r"meter/setpoint: (-?\d+) -> -42\n", wrote)
        assert old is not None, wrote
        assert "setpoint = -42 C" in pollctl("poll-now", "--gateway", "meter", "--via-worker")
        assert sent() == [(16, 4)]  # served once at the device
        (row,) = writes.recent(runtime, gateway="meter")
        assert (row.old, row.new, row.read_back, row.outcome) == (old[1], "-42", "-42", "ok")
        # Two polls and a write, all on the worker's one pooled connection.
        assert proxy.accepted == 1
        # The counter sees the command line's own connection when it makes one: on a host
        # of site plant (this host's POLLING_SITES names it), without --via-worker.
        assert pollctl("write", "--gateway", "meter", "--point", "setpoint", "--yes", "7",
                       sites="plant")  # fmt: skip
        assert proxy.accepted == 2 and sent() == [(16, 4), (16, 4)]
    finally:
        worker.stop()
        proxy.stop()


@pytest.mark.long
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_write_via_worker_to_a_single_connection_device_goes_between_its_polls(
    runtime, env, simulate, free_ports, tmp_path, celery_app
):
    """A device that accepts one connection at a time (many serial-to-Ethernet
    converters), polled every 0.5 s by a worker whose pool holds that connection. A write
    via the worker takes the endpoint lock between two polls on the same connection: served
    once, every poll around it ok. The command line's own connection is the second one,
    which the device drops: without --via-worker the write fails and sends nothing."""
    (device_port,) = free_ports(1)
    entry = {"name": "pump", "host": "127.0.0.1", "site": "plant", "interval": 0.5,
             "timeout": 0.4, "points": [POINT]}  # fmt: skip
    sim = simulate({"gateways": [{**entry, "port": device_port}]})
    proxy = FaultProxy(("127.0.0.1", device_port)).start()
    proxy.set("single")
    document = {"gateways": [{**entry, "port": proxy.port}]}
    setup_fleet(runtime, document)

    def sent() -> list[tuple[int, int]]:
        return [(c, a) for _, _, c, a in list(sim.traffic.reads) if c in (6, 16)]

    def polled_ok() -> int:
        return sum(r.outcome == "ok" for r in poll_rows(runtime))

    runner = CliRunner()
    worker = Worker({**env, "POLLING_SITES": "plant"}, tmp_path / "plant.log", 4,
                    queues="polling", hostname="w-plant@localhost")  # fmt: skip
    try:
        worker.wait_ready()
        service.start(runtime, partial(send_poll, celery_app))
        wait_until(lambda: polled_ok() >= 3, 15, "three polls")
        wrote = runner.invoke(main, ["write", "--gateway", "pump", "--point", "setpoint",
                                     "--via-worker", "--yes", "--", "-42"], env=env)  # fmt: skip
        assert wrote.exit_code == 0, wrote.output
        assert wrote.output.endswith(" -> -42\n"), wrote.output
        after = polled_ok()
        wait_until(lambda: polled_ok() >= after + 3, 15, "three polls after the write")
        # From a host of site plant (its POLLING_SITES), without --via-worker: its own.
        here = {**env, "POLLING_SITES": "plant"}
        direct = runner.invoke(main, ["write", "--gateway", "pump", "--point", "setpoint",
                                      "--yes", "7"], env=here)  # fmt: skip
        wait_until(lambda: polled_ok() >= after + 5, 15, "two polls after the refused write")
        service.stop(runtime)
    finally:
        worker.stop()
        proxy.stop()
    assert direct.exit_code == 1 and "pump" in direct.output, direct.output
    assert sent() == [(16, 4)]  # the via-worker write, served once; the direct one never
    rows = poll_rows(runtime)
    assert rows and {r.outcome for r in rows} == {"ok"}, [(r.outcome, r.error) for r in rows]
    recorded = {(r.new, r.read_back, r.outcome) for r in writes.recent(runtime, gateway="pump")}
    assert recorded == {("-42", "-42", "ok"), ("7", None, "failed")}, recorded
