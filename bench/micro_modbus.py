"""Raw pymodbus: reads of 20 holding registers per second from a pymodbus server (one asyncio
process serving one device per port), by the sync client on one connection, the asyncio
client on one connection, and the asyncio client on 100 connections at once.

    python -m bench.micro_modbus serve PORT [PORT ...]
    python -m bench.micro_modbus client sync|async SERVER_PID SECONDS PORT [PORT ...]

The client prints one JSON line: reads, seconds, and the CPU seconds of itself and of the
server over the same window (the server's from /proc).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from pymodbus.client import AsyncModbusTcpClient, ModbusTcpClient
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from .micro import ROOT, Micro, Processes, wait_for_port
from .procstats import cpu_seconds
from .run import device_ports

HOST = "127.0.0.1"
REGISTERS = 20
CONNECTIONS = 100


async def serve(ports: list[int]) -> None:
    """Serve one device (id 1, `REGISTERS` holding registers) per port until killed."""
    for port in ports:
        device = SimDevice(
            id=1, simdata=[SimData(0, count=REGISTERS, values=7, datatype=DataType.REGISTERS)]
        )
        server = ModbusTcpServer([device], address=(HOST, port))
        if not await server.listen():
            raise OSError(f"cannot listen on {HOST}:{port}")
    await asyncio.Event().wait()


def _bad(reply: ModbusPDU) -> bool:
    return reply.isError() or len(reply.registers) != REGISTERS


class Window:
    """Wall time and the CPU of this process and of the server, from start to `done()`."""

    def __init__(self, server_pid: int, seconds: float) -> None:
        self.server_pid = server_pid
        self.wall = time.perf_counter()
        self.cpu = time.process_time()
        self.server = cpu_seconds(server_pid)
        self.end = self.wall + seconds

    def done(self, reads: int, errors: int) -> dict[str, Any]:
        return {
            "reads": reads,
            "errors": errors,
            "seconds": time.perf_counter() - self.wall,
            "client_cpu": time.process_time() - self.cpu,
            "server_cpu": cpu_seconds(self.server_pid) - self.server,
        }


def sync_reads(port: int, server_pid: int, seconds: float) -> dict[str, Any]:
    client = ModbusTcpClient(HOST, port=port, timeout=2, retries=0)
    if not client.connect():
        raise ConnectionError(f"cannot connect to {HOST}:{port}")
    reads = errors = 0
    window = Window(server_pid, seconds)
    while time.perf_counter() < window.end:
        errors += _bad(client.read_holding_registers(0, count=REGISTERS, device_id=1))
        reads += 1
    figures = window.done(reads, errors)
    client.close()
    return figures


async def async_reads(ports: list[int], server_pid: int, seconds: float) -> dict[str, Any]:
    """One client per port, each awaiting its reads one after the other, all concurrently."""
    clients = [AsyncModbusTcpClient(HOST, port=p, timeout=2, retries=0) for p in ports]
    if not all(await asyncio.gather(*(c.connect() for c in clients))):
        raise ConnectionError("a client could not connect")
    window = Window(server_pid, seconds)

    async def loop(client: AsyncModbusTcpClient) -> tuple[int, int]:
        reads = errors = 0
        while time.perf_counter() < window.end:
            errors += _bad(await client.read_holding_registers(0, count=REGISTERS, device_id=1))
            reads += 1
        return reads, errors

    counts = await asyncio.gather(*(loop(c) for c in clients))
    figures = window.done(sum(r for r, _ in counts), sum(e for _, e in counts))
    for client in clients:
        client.close()
    return figures


def _client(name: str, mode: str, ports: list[int], server_pid: int, seconds: float) -> Micro:
    args = [sys.executable, "-m", "bench.micro_modbus", "client", mode, str(server_pid)]
    done = subprocess.run(
        [*args, str(seconds), *map(str, ports)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    f = json.loads(done.stdout.strip().splitlines()[-1])
    reads = max(1, f["reads"])
    return Micro(
        name=name,
        ops=f["reads"],
        seconds=round(f["seconds"], 3),
        rate=round(f["reads"] / f["seconds"], 1),
        cpu_ms={
            "client": round(f["client_cpu"] * 1000 / reads, 4),
            "server": round(f["server_cpu"] * 1000 / reads, 4),
        },
        errors=f["errors"],
    )


def run(processes: Processes, seconds: float = 4.0) -> list[Micro]:
    """The three clients in turn against one server process; `seconds` measured each."""
    ports = device_ports(CONNECTIONS, first=11_000)
    server = processes.spawn(
        "modbus-server", [sys.executable, "-m", "bench.micro_modbus", "serve", *map(str, ports)]
    )
    try:
        wait_for_port(ports[-1], server)
        cases = [
            ("modbus sync x1", "sync", ports[:1]),
            ("modbus async x1", "async", ports[:1]),
            (f"modbus async x{CONNECTIONS}", "async", ports),
        ]
        out = []
        for name, mode, used in cases:
            print(f"-- {name}: {seconds:g} s", flush=True)
            out.append(_client(name, mode, used, server.pid, seconds))
        return out
    finally:
        processes.stop(server)


def main(argv: list[str]) -> None:
    if argv[0] == "serve":
        asyncio.run(serve([int(p) for p in argv[1:]]))
        return
    mode, server_pid, seconds = argv[1], int(argv[2]), float(argv[3])
    ports = [int(p) for p in argv[4:]]
    if mode == "sync":
        figures = sync_reads(ports[0], server_pid, seconds)
    else:
        figures = asyncio.run(async_reads(ports, server_pid, seconds))
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
