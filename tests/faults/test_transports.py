"""A row per transport beyond plain TCP: RTU framing over TCP, UDP, TLS and a serial bus
(a socat pty pair, the simulator on one end, the worker's serial client on the other).
Real worker and beat, gateways at 1 s: every slot polled once, counted at the device,
none failed, missed or skipped. A serial bus is one endpoint: its three devices take
turns under one lock, and still each is polled in its own slot. And a bus's faults, on a
serial line (a relay between two pty pairs) and behind a serial-to-Ethernet converter (RTU
over TCP, a fault proxy in front): a silent device, an answer with a broken CRC, a valid
answer from the wrong device id."""

from __future__ import annotations

import ssl
import time

import pytest
from sqlalchemy import func, select

from polling.models import GatewayRow, Reading
from tests.faultproxy import FaultProxy
from tests.faults.fleets import POINTS
from tests.faults.harness import Row, wait_until
from tests.serialrelay import SerialRelay
from tests.test_transports import self_signed_certificate

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.long]

GATEWAYS = 3
#: Seconds of polling after every gateway's first poll.
RUN_S = 8


def fleet(kind: str, ports: list[int], options: dict) -> dict:
    """Three gateways over `kind`; on a serial bus, three devices of one line. Apart in the
    register space, so the device side counts each gateway's polls by address."""
    gateways = []
    for i in range(GATEWAYS):
        gateway = {
            "name": f"{kind}-{i}",
            "transport": kind,
            "interval": 1.0,
            "timeout": 0.5,
            "points": [{**p, "address": p["address"] + 10 * i} for p in POINTS],
            **options,
        }
        if kind == "serial":
            gateway["device_id"] = i + 1
        else:
            gateway |= {"host": "127.0.0.1", "port": ports[i]}
        gateways.append(gateway)
    return {"gateways": gateways}


@pytest.mark.parametrize("kind", ["rtu-over-tcp", "udp", "tls", "serial"])
def test_each_transport_polls_every_slot_once(rig_factory, free_ports, tmp_path, kind, request):
    rig = rig_factory()
    ports = free_ports(GATEWAYS)
    sim_options: dict = {"transport": kind}
    options: dict = {}
    if kind == "tls":
        cert, key = self_signed_certificate(tmp_path)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(cert, key)
        sim_options["sslctx"] = server
        options = {"tls": {"ca": cert}}
    if kind == "serial":
        server_end, client_end = request.getfixturevalue("pty_pair")
        sim_options["serial_port"] = server_end
        options = {"port": client_end, "baudrate": 19200}
    doc = fleet(kind, ports, options)
    rig.simulate(doc, **sim_options)
    rig.install(doc)
    rig.worker()
    rig.beat()
    rig.pollctl("start")
    started = time.time()
    wait_until(lambda: rig.polled_since(started), 20, f"every {kind} gateway polled")
    time.sleep(RUN_S)  # the run itself: slots keep coming at 1 s
    rig.pollctl("stop")
    row = rig.check(f"18 transport {kind}, three gateways", started=started, stopped=time.time())
    assert row.failed == 0 and row.missed == 0 and row.skipped == 0, row


def test_a_silent_device_on_a_serial_bus_costs_the_others_no_slot(rig_factory, pty_pairs):
    """Three devices on one line, the second dead (a relay drops every request to it): its
    polls fail on their timeout, the line's client is reopened, and the other two, which
    wait for the bus behind it, are still polled in every slot, once."""
    rig = rig_factory()
    worker_end, relay_client = pty_pairs("line")
    relay_server, device_end = pty_pairs("devices")
    relay = SerialRelay(relay_client, relay_server).start()
    try:
        relay.silent.add(2)
        doc = fleet("serial", [], {"port": worker_end, "baudrate": 19200, "timeout": 0.3})
        rig.simulate(doc, transport="serial", serial_port=device_end)
        rig.install(doc)
        rig.worker()
        rig.beat()
        rig.pollctl("start")
        started = time.time()
        alive = ["serial-0", "serial-2"]
        wait_until(lambda: rig.polled_since(started, alive), 20, "the live devices polled")
        time.sleep(RUN_S)  # the run itself: slots keep coming at 1 s
        rig.pollctl("stop")
        row = rig.check(
            "18 serial bus, one device of three silent: the other two",
            started=started,
            stopped=time.time(),
            names=alive,
        )
    finally:
        relay.stop()
    assert row.failed == 0 and row.missed == 0 and row.skipped == 0, row
    silent = rig.record().rows["serial-1"]
    assert silent and all(r.outcome == "failed" for r in silent), [r.outcome for r in silent]
    assert "No response received" in (silent[0].error or ""), silent[0].error
    assert relay.dropped >= len(silent)


def test_two_workers_of_one_host_take_turns_on_a_serial_line(rig_factory, pty_pair):
    """A serial port has room for one client: two workers of its host (one per core, as
    deployed) must never have it open at once, or one's reader takes the other's answers.
    Each opens the line only while it holds the bus's lock."""
    rig = rig_factory()
    server_end, client_end = pty_pair
    doc = fleet("serial", [], {"port": client_end, "baudrate": 19200})
    rig.simulate(doc, transport="serial", serial_port=server_end)
    rig.install(doc)
    rig.worker("first")
    rig.worker("second")
    rig.beat()
    rig.pollctl("start")
    started = time.time()
    wait_until(lambda: rig.polled_since(started), 20, "every device of the line polled")
    time.sleep(RUN_S)  # the run itself: slots keep coming at 1 s, batches to either worker
    rig.pollctl("stop")
    row = rig.check("18 serial bus, two workers of its host", started=started, stopped=time.time())
    assert row.failed == 0 and row.missed == 0 and row.skipped == 0, row


#: A bus's spoiled answers: fault -> its words in the summary row.
SPOILS = {
    "bad-crc": "answering with a broken CRC",
    "wrong-id": "answering under another device's id",
}
#: The spoiled device of a bus of three: the second, whose neighbour's slot begins 70 ms
#: after its own. Its failed poll holds the bus for its timeout and more (the line
#: reopened, the record written); the neighbour, waiting a bare timeout counted from its
#: batch's begin, lost its slot in 3 of 7 runs on a busy box (polling/pipeline.py,
#: LOCK_WAIT_GRACE_S).
SPOILED = 2


def spoil(relay: SerialRelay | FaultProxy, fault: str) -> None:
    """Set `relay` to spoil the answers of device SPOILED: a broken CRC, or a good frame
    under the id of the first device (a neighbour the client really polls)."""
    if fault == "bad-crc":
        relay.bad_crc.add(SPOILED)
    else:
        relay.wrong_id[SPOILED] = 1


def converter(port: int) -> dict:
    """Three devices (ids 1..3) of one RS-485 bus behind a serial-to-Ethernet converter at
    one host:port: one endpoint, taking turns on its one connection."""
    doc = fleet("serial", [], {"timeout": 0.3})
    for i, gateway in enumerate(doc["gateways"]):
        gateway |= {"name": f"converter-{i}", "transport": "rtu-over-tcp"}
        gateway |= {"host": "127.0.0.1", "port": port}
    return doc


@pytest.mark.parametrize("fault", list(SPOILS))
def test_a_spoiled_answer_on_a_serial_bus_fails_its_slots_only(rig_factory, pty_pairs, fault):
    """Three devices on one line, the third's answers spoiled on the way (a relay between
    two pty pairs): pymodbus takes neither a frame failing its CRC nor one from another
    device id, so each of its polls fails on its timeout and stores no value; the other two
    are polled in every slot, once."""
    rig = rig_factory(failure_threshold=1000)  # failed every slot, never auto-disabled
    worker_end, relay_client = pty_pairs("line")
    relay_server, device_end = pty_pairs("devices")
    relay = SerialRelay(relay_client, relay_server).start()
    try:
        spoil(relay, fault)
        doc = fleet("serial", [], {"port": worker_end, "baudrate": 19200, "timeout": 0.3})
        rig.simulate(doc, transport="serial", serial_port=device_end)
        row = run_spoiled_bus(rig, doc, f"18 serial bus, one device of three {SPOILS[fault]}")
    finally:
        relay.stop()
    assert_spoiled_slots_failed(rig, row, doc, spoiled=relay.spoiled)


@pytest.mark.parametrize("fault", list(SPOILS))
def test_a_spoiled_answer_behind_an_rtu_converter_fails_its_slots_only(
    rig_factory, free_ports, fault
):
    """The same bus behind a converter (RTU over TCP), a fault proxy between it and the
    worker spoiling the third device's answers: that device's polls fail (and its
    connection is dropped, out of step), the other two are polled in every slot, once."""
    rig = rig_factory(failure_threshold=1000)  # failed every slot, never auto-disabled
    [device_port] = free_ports(1)
    rig.simulate(converter(device_port), transport="rtu-over-tcp")
    proxy = FaultProxy(("127.0.0.1", device_port)).start()
    try:
        spoil(proxy, fault)
        proxy.set("rtu")
        rig.behind[proxy.port] = device_port  # the device counts the polls
        doc = converter(proxy.port)
        row = run_spoiled_bus(rig, doc, f"18 RTU over TCP, one device of three {SPOILS[fault]}")
    finally:
        proxy.stop()
    assert_spoiled_slots_failed(rig, row, doc, spoiled=proxy.spoiled)


def run_spoiled_bus(rig, doc: dict, fault: str) -> Row:
    """Poll the bus of `doc` for RUN_S seconds with the worker and beat; its summary row."""
    rig.install(doc)
    rig.worker()
    rig.beat()
    rig.pollctl("start")
    started = time.time()
    names = [g["name"] for g in doc["gateways"]]
    alive = [n for n in names if n != names[SPOILED - 1]]
    wait_until(lambda: rig.polled_since(started, alive), 20, "the answering devices polled")
    time.sleep(RUN_S)  # the run itself: slots keep coming at 1 s
    rig.pollctl("stop")
    return rig.check(fault, started=started, stopped=time.time())


def assert_spoiled_slots_failed(rig, row: Row, doc: dict, *, spoiled: int) -> None:
    """The spoiled device's slots are all failed (never ok with another device's values)
    and stored no reading; its neighbours' are all ok, each begun within its slot."""
    names = [g["name"] for g in doc["gateways"]]
    bad = names[SPOILED - 1]
    record = rig.record()
    others = [
        (n, r.outcome, r.error)
        for n in names
        for r in record.rows[n]
        if r.outcome not in ("ok", "failed")
    ]
    assert row.missed == 0 and row.skipped == 0, (row, others)
    for name in names:
        if name != bad:
            assert set(record.outcomes(name)) == {"ok"}, (name, record.outcomes(name))
            late = [r for r in record.rows[name] if (r.started_at - r.slot_at).total_seconds() >= 1]
            assert not late, f"{name}: {len(late)} polls begun after their slot"
    failed = record.rows[bad]
    assert set(record.outcomes(bad)) == {"failed"} and row.failed == len(failed), row
    assert all("no valid answer" in (r.error or "") for r in failed), failed[0].error
    # Asked in each of its slots (the device saw the request), spoiled on the way back.
    assert asked(rig, bad) >= len(failed) and spoiled >= len(failed), (spoiled, len(failed))
    assert readings(rig, bad) == 0 and all(readings(rig, n) > 0 for n in names if n != bad)


def asked(rig, name: str) -> int:
    """Reads of the gateway's first register (holding, function 3) the device served."""
    gateway = rig.gateways[name]
    port = rig.behind.get(gateway.port, gateway.port)
    first = gateway.points[0].address
    return sum(
        1
        for sim in rig.simulators
        for _, p, code, address in list(sim.traffic.reads)
        if p == port and code == 3 and address == first
    )


def readings(rig, name: str) -> int:
    with rig.runtime.sessions() as session:
        query = select(func.count()).select_from(Reading).join(GatewayRow)
        return session.scalar(query.where(GatewayRow.name == name)) or 0
