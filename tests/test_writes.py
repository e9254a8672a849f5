"""`pollctl write` against simulated devices, real Redis and a real database: every type
and order written and read back by a poll, a write waiting for a poll's endpoint lock,
refused writes sending nothing and recording nothing."""

from __future__ import annotations

import re
import threading
from itertools import product

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, inspect, select, text

from cli import main
from polling import codec, migrate, service, writes
from polling.chains import EndpointLock
from polling.gatewayfile import parse_gateways
from polling.models import GatewayRow, WriteRow
from polling.repository import import_gateways
from polling.values import cell, shown
from tests.test_e2e import wait_until

#: A value for each type that the simulator never holds on its own.
VALUES = {
    "int16": "-1234",
    "uint16": "54321",
    "int32": "-2000000001",
    "uint32": "4000000001",
    "int64": "-9000000000000000001",
    "uint64": "18000000000000000001",
    "float32": "-123.25",
    "float64": "0.1",
    "bool": "true",
    "string": "set-7",
}
WRITE_FUNCTIONS = (5, 6, 15, 16)


def _points() -> list[dict]:
    points = []
    for i, (type_, order) in enumerate(product(codec.TYPES, codec.ORDERS)):
        point = {"name": f"{type_}_{order}", "register": "holding", "address": 8 * i}
        point |= {"type": type_, "order": order}
        if type_ == "string":
            point["count"] = 4
        points.append(point)
    points += [
        {"name": "scaled", "register": "holding", "address": 900, "type": "int16"},
        {"name": "pump", "register": "coil", "address": 3},
        {"name": "temp", "register": "input", "address": 0},
        {"name": "alarm", "register": "discrete", "address": 0},
    ]
    points[-4] |= {"scale": 0.1, "offset": -40}
    return points


def _document(port: int) -> dict:
    return {
        "gateways": [
            {"name": "plc", "host": "127.0.0.1", "port": port, "interval": 60, "timeout": 2,
             "points": _points()},
        ]
    }  # fmt: skip


@pytest.fixture
def device(runtime, simulate, free_ports):
    (port,) = free_ports(1)
    document = _document(port)
    sim = simulate(document)
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
    yield sim
    with runtime.engine.begin() as conn:
        conn.execute(delete(WriteRow))


def _rows(runtime) -> list[WriteRow]:
    with runtime.sessions() as session:
        return list(session.scalars(select(WriteRow).order_by(WriteRow.id)))


def _sent(device) -> list[tuple[int, int]]:
    """(function, address) of each write request the device served, in order."""
    return [(c, a) for _, _, c, a in list(device.traffic.reads) if c in WRITE_FUNCTIONS]


def _reimport_with(runtime, device, **settings: object) -> None:
    """The device's gateway imported again with these gateway settings."""
    document = _document(device.ports[0])
    document["gateways"][0].update(settings)
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))


def _write(runtime, point: str, value: str, **kwargs) -> writes.WriteResult:
    planned = writes.plan_write(runtime, "plc", point, value)
    return writes.write(runtime, planned, user="tester", **kwargs)


def test_every_type_and_order_is_written_and_read_back_by_a_poll(runtime, device):
    wanted = {}
    for type_, order in product(codec.TYPES, codec.ORDERS):
        name = f"{type_}_{order}"
        result = _write(runtime, name, VALUES[type_])
        assert (result.outcome, result.error) == ("ok", None), name
        assert result.read_back == result.new
        wanted[name] = result.new
    polled = service.poll_now(runtime, "plc")
    assert polled.outcome == "ok"
    seen = {p.name: cell(shown(p, v)) for p, v in polled.values}
    assert {name: seen[name] for name in wanted} == wanted
    assert wanted["float32_CDAB"] == "-123.25" and wanted["uint64_DCBA"] == VALUES["uint64"]
    assert [c for c, _ in _sent(device)] == [16] * len(wanted)  # each served once
    rows = _rows(runtime)
    assert len(rows) == len(wanted) and {r.outcome for r in rows} == {"ok"}
    assert rows[0].user == "tester" and rows[0].gateway == "plc" and rows[0].old is not None


@pytest.mark.parametrize("kind", ["rtu-over-tcp", "udp", "serial"])
def test_a_write_goes_over_the_gateways_own_transport(runtime, simulate, free_ports, kind, request):
    """A write opens the client of the gateway's transport (RTU framing, UDP, a serial line),
    not plain Modbus TCP, and a poll over it reads the value back."""
    entry = {"name": "plc", "interval": 60, "timeout": 2, "transport": kind}
    entry["points"] = [{"name": "setpoint", "register": "holding", "address": 4, "type": "int16"}]
    sim_options: dict = {"transport": kind}
    if kind == "serial":
        server_end, client_end = request.getfixturevalue("pty_pair")
        entry |= {"port": client_end}
        sim_options["serial_port"] = server_end
    else:
        (port,) = free_ports(1)
        entry |= {"host": "127.0.0.1", "port": port}
    document = {"gateways": [entry]}
    simulate(document, **sim_options)
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
    runtime.bump_config()
    result = _write(runtime, "setpoint", "-321")
    assert (result.outcome, result.error, result.read_back) == ("ok", None, "-321")
    polled = service.poll_now(runtime, "plc")
    assert polled.outcome == "ok" and [cell(shown(p, v)) for p, v in polled.values] == ["-321"]


def test_scale_and_offset_are_inverted_and_coils_take_function_5(runtime, device):
    result = _write(runtime, "scaled", "-12.5")  # raw (-12.5 + 40) / 0.1 = 275
    assert (result.outcome, result.read_back) == ("ok", "-12.5")
    assert _write(runtime, "pump", "on").read_back == "true"
    assert _write(runtime, "pump", "off").read_back == "false"
    # Each write served exactly once at the device (function 5's echo is not a request).
    assert _sent(device) == [(16, 900), (5, 3), (5, 3)]


def test_single_register_write_uses_function_6(runtime, device):
    """`single_register_write: true` in the gateways file, imported."""
    _reimport_with(runtime, device, single_register_write=True)
    with runtime.sessions() as session:
        assert session.scalar(select(GatewayRow.single_register_write))
    result = _write(runtime, "int32_ABCD", "-7")
    assert result.outcome == "ok"
    assert _sent(device) == [(6, 64), (6, 65)]  # int32_ABCD at address 64: one register each


def test_multiple_coil_write_uses_function_15_with_one_bit(runtime, device):
    """`multiple_coil_write: true` in the gateways file, imported: a coil goes as a write of
    several coils, of one, served once per write, and the device keeps what it was sent."""
    _reimport_with(runtime, device, multiple_coil_write=True)
    with runtime.sessions() as session:
        assert session.scalar(select(GatewayRow.multiple_coil_write))
    for value, shown_as in (("on", "true"), ("off", "false")):
        result = _write(runtime, "pump", value)
        assert (result.outcome, result.new, result.read_back) == ("ok", shown_as, shown_as)
        polled = service.poll_now(runtime, "plc")
        assert {p.name: cell(shown(p, v)) for p, v in polled.values}["pump"] == shown_as
    assert _sent(device) == [(15, 3), (15, 3)]  # pump is coil 3


@pytest.mark.parametrize(
    ("gateway", "point", "value", "why"),
    [
        ("nosuch", "pump", "1", "unknown gateway: nosuch"),
        ("plc", "nosuch", "1", "gateway plc has no point nosuch"),
        ("plc", "temp", "1", "plc/temp is a read-only input register"),
        ("plc", "alarm", "1", "plc/alarm is a read-only discrete input"),
        (
            "plc",
            "int16_ABCD",
            "40000",
            "plc/int16_ABCD: 40000 is out of range for int16 (raw -32768..32767)",
        ),
        ("plc", "scaled", "3300", "plc/scaled: 3300 is out of range for int16 (raw -32768..32767)"),
        ("plc", "float64_ABCD", "ten", "plc/float64_ABCD: 'ten' is not a number"),
    ],
)
def test_refused_writes_send_nothing_and_record_nothing(
    runtime, device, gateway, point, value, why
):
    with pytest.raises(writes.WriteRefused) as refused:
        writes.plan_write(runtime, gateway, point, value)
    assert str(refused.value) == why
    assert device.traffic.reads == type(device.traffic.reads)()
    assert _rows(runtime) == []


def test_a_write_waits_for_the_poll_holding_the_endpoint_lock(runtime, device):
    """The poll's request is held unanswered at the device; the write must not send a
    request until the poll has finished, and then runs after it."""
    device.hold()
    polled = {}
    poll = threading.Thread(target=lambda: polled.update(s=service.poll_now(runtime, "plc")))
    poll.start()
    key = runtime.keys.endpoint_lock("127.0.0.1", device.ports[0])
    probe = EndpointLock(key, "probe", 1000)
    while runtime.chains.take(probe) is not None:  # until the poll holds the lock
        runtime.chains.release([probe])
    waiting = threading.Event()
    result = {}
    writer = threading.Thread(
        target=lambda: result.update(r=_write(runtime, "uint16_ABCD", "7", waiting=waiting.set))
    )
    writer.start()
    try:
        assert waiting.wait(10), "the write never found the lock busy"
        # The poll holds the lock from before its request leaves: wait for it to arrive.
        wait_until(lambda: device.traffic.in_flight == 1, 10, "the poll's request at the device")
        # Only the poll's request reached the device: uint16_ABCD (32) is the write's.
        assert not [a for _, _, _, a in list(device.traffic.reads) if a == 32]
    finally:  # never leave the threads to write into the next test's tables
        device.release()
        poll.join(10)
        writer.join(10)
    assert not poll.is_alive() and not writer.is_alive()
    assert polled["s"].outcome == "ok" and result["r"].outcome == "ok"
    # uint16_ABCD is at address 32; the poll's merged reads start at 0.
    first_write_request = min(t for t, _, _, a in device.traffic.reads if a == 32)
    assert polled["s"].finished is not None
    assert polled["s"].finished.timestamp() <= first_write_request


def test_a_write_that_never_gets_the_lock_is_recorded_busy(runtime, device):
    key = runtime.keys.endpoint_lock("127.0.0.1", device.ports[0])
    runtime.chains.take(EndpointLock(key, "someone", 60_000))
    result = _write(runtime, "uint16_ABCD", "7", wait_s=0.3)
    assert result.outcome == "busy" and "busy" in (result.error or "")
    assert not [c for _, _, c, _ in device.traffic.reads if c in WRITE_FUNCTIONS]
    assert [r.outcome for r in _rows(runtime)] == ["busy"]


def test_the_cli_writes_asks_without_yes_and_lists_writes(runtime, device, env):
    runner = CliRunner()

    def pollctl(*args: str, code: int = 0):
        result = runner.invoke(main, list(args), env=env)
        assert result.exit_code == code, result.output + str(result.exception)
        return result

    out = pollctl("write", "--gateway", "plc", "--point", "scaled", "21.5", "--yes").stdout
    assert re.fullmatch(r"plc/scaled: -?[\d.]+ -> 21\.5\n", out)
    # Not on a terminal and no --yes: nothing asked, nothing sent.
    asked = pollctl("write", "--gateway", "plc", "--point", "scaled", "22", code=1)
    assert asked.stderr == "error: write 22.0 to plc/scaled: not on a terminal, so add --yes\n"
    refused = pollctl("write", "--gateway", "plc", "--point", "temp", "1", "--yes", code=1)
    assert refused.stderr == "error: plc/temp is a read-only input register\n"
    listed = pollctl("writes", "--gateway", "plc", "--since", "1h").stdout
    header, row = listed.splitlines()[0], listed.splitlines()[-1]
    assert header.split() == [
        "at", "user", "gateway", "point", "old", "new", "read_back", "outcome", "error",
    ]  # fmt: skip
    assert row.split()[3:5] == ["plc", "scaled"] and row.split()[-3:] == ["21.5", "21.5", "ok"]
    assert len(listed.splitlines()) == 3  # header, rule, one write
    assert pollctl("writes", "--gateway", "other").stdout.count("\n") <= 2


def test_migration_0010_goes_down_and_up_keeping_gateways_and_readings(runtime, device):
    assert _write(runtime, "uint16_ABCD", "7").outcome == "ok"
    service.poll_now(runtime, "plc")
    migrate.downgrade(runtime.engine, "0008")
    assert migrate.current_revision(runtime.engine) == "0008"
    tables = inspect(runtime.engine).get_table_names()
    assert "writes" not in tables
    columns = {c["name"] for c in inspect(runtime.engine).get_columns("gateways")}
    assert "single_register_write" not in columns
    with runtime.engine.connect() as conn:  # no cascade from a copied `gateways` (see 0008)
        assert conn.scalar(text("SELECT count(*) FROM gateways")) == 1
        assert conn.scalar(text("SELECT count(*) FROM readings")) > 0
    migrate.upgrade(runtime.engine)
    assert _rows(runtime) == []
    with runtime.engine.connect() as conn:  # nor from the way up (a plain ADD COLUMN)
        assert conn.scalar(text("SELECT count(*) FROM readings")) > 0
    with runtime.sessions() as session:
        assert session.scalar(select(GatewayRow.single_register_write)) is False


def test_migration_0012_goes_down_and_up_keeping_gateways_and_readings(runtime, device):
    service.poll_now(runtime, "plc")
    migrate.downgrade(runtime.engine, "0011")
    assert migrate.current_revision(runtime.engine) == "0011"
    columns = {c["name"] for c in inspect(runtime.engine).get_columns("gateways")}
    assert "multiple_coil_write" not in columns and "single_register_write" in columns
    with runtime.engine.connect() as conn:  # a plain DROP COLUMN: nothing cascades
        assert conn.scalar(text("SELECT count(*) FROM gateways")) == 1
        assert conn.scalar(text("SELECT count(*) FROM readings")) > 0
    migrate.upgrade(runtime.engine)
    with runtime.engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM readings")) > 0
    with runtime.sessions() as session:
        assert session.scalar(select(GatewayRow.multiple_coil_write)) is False


def test_a_device_that_does_not_answer_is_recorded_failed(runtime, device):
    device.hold()  # requests reach the device and stay unanswered past the 2 s timeout
    try:
        result = _write(runtime, "uint16_ABCD", "7")
    finally:
        device.release()
    assert (result.outcome, result.old, result.read_back) == ("failed", None, None)
    assert "plc/uint16_ABCD" in (result.error or "")
    assert not [c for _, _, c, _ in device.traffic.reads if c in WRITE_FUNCTIONS]
    (row,) = _rows(runtime)
    assert (row.outcome, row.error, row.user) == ("failed", result.error, "tester")
    key = runtime.keys.endpoint_lock("127.0.0.1", device.ports[0])
    assert runtime.redis.exists(key) == 0  # released


def test_write_errors_say_writing_and_keep_the_exception_codes():
    from polling.errors import DeviceExceptionResponse, GatewayTimeout

    timeout = writes._writing(GatewayTimeout("no valid answer reading writing plc/p at h:1"))
    assert isinstance(timeout, GatewayTimeout)
    assert str(timeout) == "no valid answer writing plc/p at h:1"
    said_no = writes._writing(
        DeviceExceptionResponse(
            "device answered exception 2 (illegal data address) reading writing plc/p",
            function_code=16,
            exception_code=2,
        )
    )
    assert str(said_no) == "device answered exception 2 (illegal data address) writing plc/p"
    assert (said_no.function_code, said_no.exception_code) == (16, 2)


def test_a_string_wider_than_one_function_16_write_is_refused(runtime, device):
    """A string point may read 125 registers, but the protocol's function 16 carries at
    most 123: such a write was planned and sent as one request."""
    document = _document(device.ports[0])
    label = {"name": "label", "register": "holding", "address": 2000}
    document["gateways"][0]["points"].append(label | {"type": "string", "count": 124})
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
    with pytest.raises(writes.WriteRefused) as refused:
        writes.plan_write(runtime, "plc", "label", "x")
    assert str(refused.value) == (
        "plc/label: 124 registers are more than one write carries (123); "
        "set single_register_write: true to write them one at a time"
    )
    assert _rows(runtime) == []
