"""Transports beyond Modbus TCP: their YAML validation, and a read of each through ModbusPool
against a pymodbus server with the matching framer on loopback (serial through a socat pty
pair, TLS with a certificate made here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from polling.errors import GatewayTimeout, ModbusError
from polling.modbus import ModbusPool
from polling.plan import Request
from polling.transports import TCP, Transport, parse_transport
from tests.rtuframes import crc, split_answers, spoil
from tests.test_sites import publish

POINTS = [{"name": "p", "register": "holding", "address": 0, "type": "uint16"}]
READ = [Request(device_id=1, register="holding", address=0, count=2)]


def faults(data: dict) -> tuple[Transport, object, list[str]]:
    found: list[str] = []
    transport, port = parse_transport(data, lambda key, msg: found.append(f"{key}: {msg}"))
    return transport, port, found


def test_a_gateway_without_transport_is_plain_tcp_with_its_int_port():
    assert faults({"port": 502}) == (TCP, 502, [])
    assert faults({}) == (TCP, 502, [])


def test_serial_needs_a_device_path_and_takes_line_settings():
    transport, port, found = faults(
        {"transport": "serial", "port": "/dev/ttyUSB0", "baudrate": 9600, "parity": "E"}
    )
    assert found == [] and port == "/dev/ttyUSB0"
    assert transport.option("baudrate") == 9600 and transport.option("parity") == "E"
    assert faults({"transport": "serial", "port": 502})[2] == [
        "port: transport serial needs a device path (e.g. /dev/ttyUSB0), got 502"
    ]
    assert faults({"transport": "serial", "port": "/dev/x", "parity": "X"})[2] == [
        "parity: must be one of N, E, O, got 'X'"
    ]


def test_network_transports_refuse_a_path_port_and_serial_keys():
    assert faults({"transport": "udp", "port": "/dev/ttyUSB0"})[2] == [
        "port: must be a TCP/UDP port between 1 and 65535, got '/dev/ttyUSB0'"
    ]
    assert faults({"transport": "tcp", "baudrate": 9600})[2] == [
        "baudrate: only for transport serial, not tcp"
    ]
    assert faults({"transport": "modbus"})[2] == [
        "transport: must be one of tcp, rtu-over-tcp, udp, tls, serial, got 'modbus'"
    ]


def test_tls_needs_its_ca_and_cert_with_key():
    transport, port, found = faults({"transport": "tls", "tls": {"ca": "/ca.pem"}})
    assert found == [] and port == 802 and transport.option("ca") == "/ca.pem"
    assert faults({"transport": "tls"})[2] == [
        "tls: required for transport tls: a mapping with ca, cert and key paths"
    ]
    assert faults({"transport": "tls", "tls": {"ca": "/a", "cert": "/c"}})[2] == [
        "tls.key: cert and key go together"
    ]


def read(transport: Transport | None, port, requests=READ, timeout: float = 1.0):
    pool = ModbusPool()
    try:
        return pool.run(pool.read("127.0.0.1", port, timeout, requests, transport), timeout=10)
    finally:
        pool.close()


def document(port: int, devices: tuple[int, ...] = (1,)) -> dict:
    return {
        "gateways": [
            {
                "name": f"gw{d}",
                "host": "127.0.0.1",
                "port": port,
                "device_id": d,
                "interval": 1,
                "points": POINTS,
            }
            for d in devices
        ]
    }


@pytest.mark.parametrize("kind", ["rtu-over-tcp", "udp"])
def test_a_network_transport_reads_from_its_matching_server(simulate, free_ports, kind):
    [port] = free_ports(1)
    simulate(document(port), transport=kind)
    values = read(Transport(kind), port)[0]
    assert len(values) == 2 and all(isinstance(v, int) for v in values)


def test_tcp_framing_against_an_rtu_server_is_no_answer(simulate, free_ports):
    """The pool keys clients by transport: the same host:port as tcp gets no valid frame."""
    [port] = free_ports(1)
    simulate(document(port), transport="rtu-over-tcp")
    with pytest.raises(ModbusError):
        read(None, port, timeout=0.5)
    assert len(read(Transport("rtu-over-tcp"), port)[0]) == 2


def self_signed_certificate(tmp: Path) -> tuple[str, str]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    args += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    subprocess.run(
        ["openssl", *args, "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return str(cert), str(key)


def test_tls_reads_from_a_server_whose_certificate_the_ca_signed(simulate, free_ports, tmp_path):
    import ssl

    cert, key = self_signed_certificate(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    [port] = free_ports(1)
    simulate(document(port), transport="tls", sslctx=server)
    tls = Transport.of("tls", {"ca": cert})
    assert len(read(tls, port)[0]) == 2


def test_serial_reads_every_device_of_a_bus_and_goes_on_after_a_silent_bus(simulate, pty_pair):
    """A silent bus (no server yet on the other end) times out and drops the client; the
    next read reopens the port and every device on the bus answers in turn."""
    server_end, client_end = pty_pair
    serial = Transport.of("serial", {"baudrate": 19200})
    both = [READ[0], Request(device_id=2, register="holding", address=0, count=2)]
    pool = ModbusPool()
    try:

        def run(requests, timeout=1.0):
            return pool.run(pool.read("", client_end, timeout, requests, serial), timeout=10)

        with pytest.raises(GatewayTimeout):
            run(both, timeout=0.3)
        simulate(document(1, devices=(1, 2)), transport="serial", serial_port=server_end)
        assert [len(v) for v in run(both)] == [2, 2]
        assert [len(v) for v in run(both)] == [2, 2]
    finally:
        pool.close()


# -- the gateways file and storage -------------------------------------------------------------

BUS = [
    {"name": "plain", "host": "10.0.0.1", "interval": 1, "points": POINTS},
    {
        "name": "line1",
        "transport": "serial",
        "port": "/dev/ttyUSB0",
        "baudrate": 9600,
        "parity": "E",
        "device_id": 3,
        "site": "plant",
        "interval": 1,
        "points": POINTS,
    },
    {
        "name": "secure",
        "transport": "tls",
        "host": "10.0.0.2",
        "tls": {"ca": "/etc/pollctl/ca.pem", "cert": "/etc/c.pem", "key": "/etc/k.pem"},
        "interval": 1,
        "points": POINTS,
    },
    {"name": "conv", "transport": "rtu-over-tcp", "host": "10.0.0.3", "port": 4001}
    | {"interval": 1, "points": POINTS},
]


def test_the_file_reads_each_transport_and_a_serial_gateway_needs_no_host():
    from polling.gatewayfile import parse_gateways

    plain, line1, secure, conv = parse_gateways({"gateways": BUS})
    assert plain.transport is TCP and plain.port == 502
    assert line1.transport.kind == "serial" and line1.port == 0 and line1.host == ""
    assert line1.transport.option("device") == "/dev/ttyUSB0"
    assert secure.transport.option("ca") == "/etc/pollctl/ca.pem" and secure.port == 802
    assert conv.transport == Transport("rtu-over-tcp") and conv.port == 4001


def test_a_transport_fault_is_one_line_naming_file_gateway_and_field(tmp_path):
    import yaml

    from polling.errors import ConfigError
    from polling.gatewayfile import load_gateways

    path = tmp_path / "gateways.yaml"
    bad = dict(BUS[1], port=502)
    path.write_text(yaml.safe_dump({"gateways": [bad]}))
    with pytest.raises(ConfigError) as info:
        load_gateways(path)
    assert str(info.value) == (
        f"{path}: gateway 'line1': field 'port': transport serial needs a device path "
        "(e.g. /dev/ttyUSB0), got 502"
    )


@pytest.mark.parametrize(
    ("where", "entry"),
    [
        ("device_id", {"device_id": 0}),
        ("device_id", {"device_id": 248}),
        ("points.temp.device_id", {"points": [{"name": "temp", "address": 0, "device_id": 0}]}),
    ],
)
def test_an_rtu_gateway_refuses_the_broadcast_and_reserved_ids(where, entry):
    from polling.errors import ConfigError
    from polling.gatewayfile import parse_gateways

    for kind in ({"transport": "rtu-over-tcp", "host": "127.0.0.1", "port": 4001}, BUS[1]):
        gateway = {**kind, "name": "bus", "interval": 1, "points": [{"name": "p", "address": 0}]}
        with pytest.raises(ConfigError) as info:
            parse_gateways({"gateways": [{**gateway, **entry}]})
        assert f"gateway 'bus': field '{where}': " in str(info.value)
        assert "ids 1 to 247 (0 is broadcast: no device answers it)" in str(info.value)
    # Plain Modbus TCP takes 0 (many gateways answer for themselves there) and 255.
    tcp = {
        "name": "tcp",
        "host": "127.0.0.1",
        "interval": 1,
        "points": [{"name": "p", "address": 0}],
    }
    assert parse_gateways({"gateways": [{**tcp, "device_id": 0}]})[0].device_id == 0


def test_transports_round_trip_through_storage(runtime):
    from polling.gatewayfile import parse_gateways
    from polling.repository import import_gateways, load_gateways

    gateways = parse_gateways({"gateways": BUS})
    with runtime.sessions() as session, session.begin():
        import_gateways(session, gateways)
    with runtime.sessions() as session:
        stored = {g.config.name: g.config for g in load_gateways(session)}
    assert [stored[g.name] for g in gateways] == gateways


# -- through the real pipeline (a manual poll: lock, read, decode, record) ---------------------


def _store(runtime, document: dict) -> None:
    from polling.gatewayfile import parse_gateways
    from polling.repository import import_gateways

    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
    runtime.bump_config()  # as `gateway import` does: the cached fleet is read again


@pytest.mark.parametrize("kind", ["rtu-over-tcp", "udp"])
def test_a_poll_through_the_pipeline_over_a_network_transport(runtime, simulate, free_ports, kind):
    from polling import service

    [port] = free_ports(1)
    doc = document(port)
    simulate(doc, transport=kind)
    doc["gateways"][0]["transport"] = kind
    _store(runtime, doc)
    served = service.poll_now(runtime, "gw1")
    assert served.outcome == "ok", served.error
    assert [p.name for p, _ in served.values] == ["p"]


def test_a_poll_through_the_pipeline_over_a_serial_bus(runtime, simulate, pty_pair):
    from polling import service

    server_end, client_end = pty_pair
    simulate(document(1, devices=(1, 2)), transport="serial", serial_port=server_end)
    doc = document(1, devices=(1, 2))
    for gateway in doc["gateways"]:
        gateway.pop("host")
        gateway |= {"transport": "serial", "port": client_end}
    _store(runtime, doc)
    for name in ("gw1", "gw2"):
        served = service.poll_now(runtime, name)
        assert served.outcome == "ok", served.error
    [one, two] = service.select_gateways(runtime, ["gw1", "gw2"])
    assert one.endpoint == two.endpoint  # one bus, one lock: the devices take turns
    assert one.endpoint[1] == client_end


def test_validate_lists_serial_buses_by_site_and_warns_on_the_default_site(runtime):
    from polling.checks.base import Context
    from polling.checks.serial import check_serial_buses

    assert check_serial_buses(Context(runtime)).status == "healthy"
    shared = dict(BUS[1], name="line2", device_id=4)
    del shared["site"]
    _store(runtime, {"gateways": [BUS[0], BUS[1], shared]})
    publish(runtime, "pollctl-worker-1@plant-pc", ("plant",))
    result = check_serial_buses(Context(runtime))
    assert result.status == "warning"
    assert result.message == (
        "serial buses, each opened by the worker serving its site: "
        "site default (no live worker): /dev/ttyUSB0 (1 gateways); "
        "site plant (pollctl-worker-1@plant-pc): /dev/ttyUSB0 (1 gateways)"
    )
    assert result.details["buses"]["plant"] == {"/dev/ttyUSB0": ["line1"]}


def test_validate_warns_when_workers_on_two_hosts_serve_a_site_with_a_serial_bus(runtime):
    """A serial port is on one host: a second host's worker serving the site would take
    polls of a device it does not have. Two workers of one host are fine (they take turns
    under the bus's lock)."""
    from polling.checks.base import Context
    from polling.checks.serial import check_serial_buses

    _store(runtime, {"gateways": [BUS[1]]})
    publish(runtime, "pollctl-worker-1@plant-pc", ("plant",))
    publish(runtime, "pollctl-worker-2@plant-pc", ("plant",))
    assert check_serial_buses(Context(runtime)).status == "healthy"
    publish(runtime, "pollctl-worker-1@office", ("plant", "default"))
    result = check_serial_buses(Context(runtime))
    assert result.status == "warning"
    assert result.message.startswith(
        "site plant has a serial bus but is served by workers on 2 hosts (office, plant-pc)"
    ), result.message


def test_validate_finds_gateways_of_one_bus_with_different_line_settings(runtime):
    """One device path on one site is one line: a second client on it at another baud rate
    would garble both (clients are kept per transport and options), so it is an error."""
    from polling.checks.base import Context
    from polling.checks.serial import check_serial_buses

    other = dict(BUS[1], name="line2", device_id=4, baudrate=19200)
    same = dict(BUS[1], name="line3", device_id=5)
    _store(runtime, {"gateways": [BUS[1], other, same]})
    result = check_serial_buses(Context(runtime))
    assert result.status == "error"
    assert result.message == (
        "serial bus /dev/ttyUSB0 on site plant: its gateways disagree on the line settings: "
        "line1, line3 at 9600 baud, parity E, 1 stop bits, 8 data bits; "
        "line2 at 19200 baud, parity E, 1 stop bits, 8 data bits"
    )


# -- faults on an RTU line: a tiny raw server answering what a real bus can --------------------


@pytest.fixture
def raw_rtu_server():
    """A TCP server answering each RTU request with `answer(request)`; stopped at teardown."""
    import socket
    import threading

    servers: list[tuple[socket.socket, threading.Thread]] = []

    def start(answer) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()

        def serve() -> None:
            try:
                conn, _ = sock.accept()
            except OSError:  # closed at teardown
                return
            with conn:
                while request := conn.recv(256):
                    conn.sendall(answer(request))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        servers.append((sock, thread))
        return sock.getsockname()[1]

    yield start
    for sock, thread in servers:
        sock.close()
        thread.join(5)


def _reply(device_id: int) -> bytes:
    body = bytes([device_id, 3, 4, 0, 1, 0, 2])
    return body + crc(body)


def test_an_answer_with_a_bad_crc_is_no_valid_answer(raw_rtu_server):
    good = _reply(1)
    port = raw_rtu_server(lambda request: good[:-1] + bytes([good[-1] ^ 0xFF]))
    with pytest.raises(GatewayTimeout, match="no valid answer"):
        read(Transport("rtu-over-tcp"), port, timeout=0.3)


def test_a_good_answer_on_the_raw_server_is_read(raw_rtu_server):
    port = raw_rtu_server(lambda request: _reply(1))
    assert read(Transport("rtu-over-tcp"), port) == [[1, 2]]


@pytest.mark.parametrize("device_id", [1, 0])
def test_an_answer_from_the_wrong_device_is_not_taken(raw_rtu_server, device_id):
    """pymodbus skips a frame from another device id: the read times out, never mixes up.
    Not for device 0 (RTU's broadcast address, which no device answers): there pymodbus
    takes any device's answer, and the pool refuses it."""
    port = raw_rtu_server(lambda request: _reply(5))
    requests = [Request(device_id=device_id, register="holding", address=0, count=2)]
    with pytest.raises(GatewayTimeout, match="no valid answer"):
        read(Transport("rtu-over-tcp"), port, requests, timeout=0.3)


def test_the_fault_relays_cut_whole_answers_and_spoil_only_crc_or_id():
    """What the fault rows' relays send (tests/rtuframes.py): a broken CRC changes the CRC
    alone; a wrong id is a well-formed answer of the other device, its CRC good."""
    good = _reply(2)
    exception = bytes([2, 0x83, 2])
    assert split_answers(good + exception + crc(exception) + good[:3]) == (
        [good, exception + crc(exception)],
        good[:3],
    )
    bad = spoil(good, bad_crc={2}, wrong_id={})
    assert bad[:-1] == good[:-1] and bad != good
    assert spoil(good, bad_crc=set(), wrong_id={2: 3}) == _reply(3)
    assert spoil(_reply(1), bad_crc={2}, wrong_id={2: 3}) == _reply(1)
