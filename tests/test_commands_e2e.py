"""`pollctl poll-now` and `pollctl write` of a serial gateway go through a worker of its
site, over the worker's own connection to the line (a serial port has room for one client,
and it is on the worker's host); with no worker to take them, one line and nothing sent,
and the command never runs later. With `--via-worker`, a TCP gateway's go the same way."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from cli import main
from polling import writes
from polling.gatewayfile import parse_gateways
from polling.repository import import_gateways
from tests.faultproxy import FaultProxy
from tests.processes import Worker

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

    def pollctl(*args: str) -> str:
        result = runner.invoke(main, list(args), env=env)
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
        # The counter sees the command line's own connection when it makes one.
        assert pollctl("write", "--gateway", "meter", "--point", "setpoint", "--yes", "7")
        assert proxy.accepted == 2 and sent() == [(16, 4), (16, 4)]
    finally:
        worker.stop()
        proxy.stop()
