"""A row per transport beyond plain TCP: RTU framing over TCP, UDP, TLS and a serial bus
(a socat pty pair, the simulator on one end, the worker's serial client on the other).
Real worker and beat, gateways at 1 s: every slot polled once, counted at the device,
none failed, missed or skipped. A serial bus is one endpoint: its three devices take
turns under one lock, and still each is polled in its own slot."""

from __future__ import annotations

import ssl
import time

import pytest

from tests.faults.fleets import POINTS
from tests.faults.harness import wait_until
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
