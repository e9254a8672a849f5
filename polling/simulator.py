"""Simulated gateways: every gateway of a file served by pymodbus on loopback.

Values change once per tick (default 1 s) in a known way (`simulated_value`), so a test
can say which value a poll at a given time must have read.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer, ModbusTlsServer, ModbusUdpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from . import codec
from .gateways import Gateway, Point

log = logging.getLogger(__name__)

BLOCKS = ("coil", "discrete", "holding", "input")
FUNCTION_BLOCK = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 3: "holding", 4: "input"}
#: Writes (functions 5, 15, 6, 16): what they set stays set, as on a device's setpoint.
WRITE_BLOCK = {5: "coil", 15: "coil", 6: "holding", 16: "holding"}
#: pymodbus serves these by setting the value, then reading it back for the echo in its
#: answer: two calls of the device's action for one request, the second without values.
ECHOED_WRITES = (5, 6)
#: Registers served beyond the last configured one, so gap-merged reads stay legal.
MARGIN = 128


def _seed(gateway: str, point: str) -> int:
    return zlib.crc32(f"{gateway}/{point}".encode()) % 10_000


#: What a plant's point with this unit reads: (low, high, period in ticks) of a slow
#: triangle wave; a period of 0 is a counter that only counts up (from `low`, `high` a tick).
PLANT: dict[str, tuple[float, float, int]] = {
    "°C": (45.0, 75.0, 240),
    "degC": (45.0, 75.0, 240),
    "%": (0.0, 100.0, 120),
    "V": (226.0, 234.0, 90),
    "A": (2.0, 18.0, 60),
    "kW": (5.0, 95.0, 180),
    "W": (50.0, 950.0, 180),
    "Hz": (49.9, 50.1, 30),
    "bar": (1.5, 4.5, 150),
    "m3/h": (5.0, 45.0, 200),
    "kWh": (12_000.0, 0.05, 0),
    "Wh": (1_200_000.0, 5.0, 0),
    "m3": (3_400.0, 0.01, 0),
}


def _plant_raw(point: Point, s: int, t: int) -> codec.Value | None:
    """A believable raw value for a point whose unit says what it measures (a temperature
    in a boiler's range, a valve 0-100 %, an energy counter counting up), or None."""
    shape = PLANT.get(point.unit or "")
    if shape is None or point.type in ("bool", "string"):
        return None
    low, high, period = shape
    if period == 0:
        value = low + (s % 100) + high * t
    else:
        phase = (s + t) % period
        value = low + (high - low) * abs(2 * phase - period) / period
    raw = (value - point.offset) / (point.scale or 1.0)
    if point.type in codec.INT_RANGES:
        lowest, highest = codec.INT_RANGES[point.type]
        return round(raw) if lowest <= round(raw) <= highest else None
    return round(raw * 4) / 4  # quarters are exact in float32


def simulated_raw(gateway: str, point: Point, tick: int) -> codec.Value:
    """The raw value a simulated point holds during `tick`; exact in its type."""
    s = _seed(gateway, point.name)
    t = tick % 100_000
    plant = _plant_raw(point, s, t)
    return plant if plant is not None else _generic_raw(point, s, t)


def _generic_raw(point: Point, s: int, t: int) -> codec.Value:
    """A value that uses the type's whole width (sign, high words), for decoding tests."""
    match point.type:
        case "bool":  # a pump or an alarm: changes every half minute, not every tick
            return ((s + t) // 30) % 2 == 0
        case "string":
            return f"{point.name[:6]}-{t}"[: 2 * (point.count or 1)]
        case "int16":
            return (s + t) % 20_000 - 10_000
        case "uint16":
            return (s + t) % 65_536
        case "int32":
            return -(s * 1_000 + t)
        case "uint32":
            return 3_000_000_000 + s * 1_000 + t
        case "int64":
            return -(s * 10**12) - t
        case "uint64":
            return 2**60 + s * 1_000 + t
        case "float32":
            return (s % 1_000) + (t % 1_000) * 0.25
        case _:  # float64
            return s / 8 + t * 0.125


def simulated_value(gateway: str, point: Point, tick: int) -> codec.Value:
    """The engineering value a poll during `tick` reads (raw, then scale and offset)."""
    return codec.scaled(simulated_raw(gateway, point, tick), point.scale, point.offset)


def current_tick(tick_seconds: float, now: float | None = None) -> int:
    return int((time.time() if now is None else now) // tick_seconds)


@dataclass
class Traffic:
    """What the devices served, for tests that count polls from the device's side."""

    #: (time, port, function code, address) of the requests served, the newest ones
    #: (bounded, so a long `pollctl simulate` does not grow without end).
    reads: deque[tuple[float, int, int, int]] = field(default_factory=lambda: deque(maxlen=500_000))
    #: (time, port, function code, address, count) of the requests refused with exception 2
    #: (a read spanning one of a device's holes).
    refused: deque[tuple[float, int, int, int, int]] = field(
        default_factory=lambda: deque(maxlen=100_000)
    )
    #: Requests being answered right now (device latency makes this non-zero for a while).
    in_flight: int = 0
    #: While set and not released, every request waits for it: a device that answers only
    #: when a test says, so a fault lands at a chosen point of a poll, not by timing.
    gate: asyncio.Event | None = None


@dataclass
class _Device:
    port: int
    device_id: int
    points: dict[str, list[tuple[str, Point]]] = field(
        default_factory=lambda: {b: [] for b in BLOCKS}
    )
    ticks: dict[str, int] = field(default_factory=dict)
    #: Addresses of each block the device refuses with exception 2 (illegal data address):
    #: a register map with holes, which a read spanning one is refused as a whole.
    holes: dict[str, frozenset[int]] = field(default_factory=dict)
    #: Addresses a write set: no longer moved by the ticks.
    held: dict[str, set[int]] = field(default_factory=lambda: {b: set() for b in BLOCKS})
    #: (block, address, count) of reads answered only after a delay, once each (seconds).
    stalls: dict[tuple[str, int, int], float] = field(default_factory=dict)

    def refuses(self, block: str, address: int, count: int) -> bool:
        holes = self.holes.get(block)
        if not holes:  # the usual device: no scan per request
            return False
        return any(a in holes for a in range(address, address + count))

    def size(self, block: str) -> int:
        """Registers in a block (bits are packed 16 to a register)."""
        ends = [p.address + p.width for _, p in self.points[block]] or [0]
        if block in ("coil", "discrete"):
            return max(ends) // 16 + 1 + MARGIN // 16
        return min(max(ends) + MARGIN, 65536)

    def refresh(self, block: str, registers: list[int], tick: int) -> None:
        if self.ticks.get(block) == tick:
            return
        self.ticks[block] = tick
        for gateway, point in self.points[block]:
            if not self.held[block].isdisjoint(range(point.address, point.address + point.width)):
                continue
            value = simulated_raw(gateway, point, tick)
            if block in ("coil", "discrete"):
                word, bit = divmod(point.address, 16)
                mask = 1 << bit
                registers[word] = (registers[word] | mask) if value else (registers[word] & ~mask)
            else:
                words = codec.encode(value, point.type, point.order, point.count)
                registers[point.address : point.address + len(words)] = words


#: Per (port, device id): register kind -> addresses refused with exception 2.
Holes = Mapping[tuple[int, int], Mapping[str, Iterable[int]]]


def _devices(gateways: Sequence[Gateway], holes: Holes) -> dict[int, dict[int, _Device]]:
    """Devices by port, then by device id."""
    ports: dict[int, dict[int, _Device]] = {}
    for gateway in gateways:
        devices = ports.setdefault(gateway.port, {})
        for point in gateway.points:
            device_id = point.device_id if point.device_id is not None else gateway.device_id
            device = devices.setdefault(device_id, _Device(gateway.port, device_id))
            device.points[point.register].append((gateway.name, point))
    for (port, device_id), blocks in holes.items():
        holey = ports.get(port, {}).get(device_id)
        if holey is None:
            raise ValueError(f"holes for device {device_id} on port {port}: no such device")
        holey.holes = {block: frozenset(addresses) for block, addresses in blocks.items()}
    return ports


async def _action(
    device: _Device,
    tick_seconds: float,
    latency: float,
    traffic: Traffic,
    function_code: int,
    _start: int,
    address: int,
    count: int,
    registers: list[int],
    values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    if function_code in ECHOED_WRITES and values is None:
        return None  # the echo of a write already counted (and gated), not a request
    traffic.reads.append((time.time(), device.port, function_code, address))
    block = FUNCTION_BLOCK.get(function_code)
    if block is not None and (stall := device.stalls.pop((block, address, count), 0.0)):
        await asyncio.sleep(stall)
    if block is not None and device.refuses(block, address, count):
        traffic.refused.append((time.time(), device.port, function_code, address, count))
        return ExcCodes.ILLEGAL_ADDRESS
    block = block or WRITE_BLOCK.get(function_code)
    if block is not None:
        device.refresh(block, registers, current_tick(tick_seconds))
    if function_code in WRITE_BLOCK and values:
        device.held[WRITE_BLOCK[function_code]].update(range(address, address + len(values)))
    if latency or traffic.gate is not None:
        traffic.in_flight += 1
        try:
            if traffic.gate is not None:
                await traffic.gate.wait()
            await asyncio.sleep(latency)
        finally:
            traffic.in_flight -= 1
    return None


def _sim_device(
    device: _Device, tick_seconds: float, latency: float, traffic: Traffic
) -> SimDevice:
    blocks = tuple(
        [SimData(0, count=16 * device.size(block), values=False, datatype=DataType.BITS)]
        if block in ("coil", "discrete")
        else [SimData(0, count=device.size(block), datatype=DataType.REGISTERS)]
        for block in BLOCKS
    )
    return SimDevice(
        id=device.device_id,
        simdata=blocks,  # type: ignore[arg-type]
        action=partial(_action, device, tick_seconds, latency, traffic),
    )


class Simulator:
    """pymodbus servers for a fleet, in one asyncio loop on a thread of its own."""

    def __init__(
        self,
        gateways: Sequence[Gateway],
        *,
        host: str = "127.0.0.1",
        latency_ms: float = 0.0,
        tick_seconds: float = 1.0,
        holes: Holes | None = None,
        transport: str = "tcp",
        sslctx: Any = None,
        serial_port: str | None = None,
    ) -> None:
        """`transport` as a gateway's (tcp, rtu-over-tcp, udp, tls with `sslctx`, serial on
        `serial_port`, one bus serving every device of the file)."""
        self.host = host
        self.transport, self._sslctx, self._serial_port = transport, sslctx, serial_port
        self.tick_seconds = tick_seconds
        self._ports = _devices(gateways, holes or {})
        self._latency = latency_ms / 1000
        self._servers: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.traffic = Traffic()

    @property
    def ports(self) -> list[int]:
        return sorted(self._ports)

    async def serve(self) -> None:
        """Serve until cancelled (also the body of `pollctl simulate`)."""
        for port, devices in self._ports.items():
            sims = [
                _sim_device(d, self.tick_seconds, self._latency, self.traffic)
                for d in devices.values()
            ]
            server = self._server(sims, port)
            if not await server.listen():
                raise OSError(f"simulator cannot listen on {self.host}:{port}")
            self._servers.append(server)
        self._ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            for server in self._servers:
                await server.shutdown()
            self._servers.clear()

    def _server(self, sims: list[Any], port: int) -> Any:
        address = (self.host, port)
        if self.transport == "rtu-over-tcp":
            return ModbusTcpServer(sims, address=address, framer=FramerType.RTU)
        if self.transport == "udp":
            return ModbusUdpServer(sims, address=address)
        if self.transport == "tls":
            return ModbusTlsServer(sims, address=address, sslctx=self._sslctx)
        if self.transport == "serial":
            return ModbusSerialServer(sims, port=self._serial_port or "", baudrate=19200)
        return ModbusTcpServer(sims, address=address)

    def start(self, timeout: float = 10.0) -> Simulator:
        self._thread = threading.Thread(target=self._run, name="modbus-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"simulator did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._task = self._loop.create_task(self.serve())
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    def set_holes(self, port: int, device_id: int, holes: Mapping[str, Iterable[int]]) -> None:
        """From now on the device refuses reads spanning these addresses (a firmware update
        that changed its map, while pollers have the old plan in memory)."""
        device = self._ports[port][device_id]
        blocks = {block: frozenset(addresses) for block, addresses in holes.items()}
        self._in_loop(lambda: setattr(device, "holes", blocks))

    def stall(
        self, port: int, device_id: int, block: str, address: int, count: int, seconds: float
    ) -> None:
        """The device's next read of exactly this span is answered only after `seconds`
        (a request it misses once, mid-poll: the client times out on that one read)."""
        device = self._ports[port][device_id]
        self._in_loop(lambda: device.stalls.__setitem__((block, address, count), seconds))

    def hold(self) -> None:
        """Requests from now on wait, unanswered, until `release` (they count as in flight)."""
        self._in_loop(lambda: setattr(self.traffic, "gate", asyncio.Event()))

    def release(self) -> None:
        """Answer the held requests and stop holding."""

        def open_gate() -> None:
            gate, self.traffic.gate = self.traffic.gate, None
            if gate is not None:
                gate.set()

        self._in_loop(open_gate)

    def _in_loop(self, action: Callable[[], None]) -> None:
        """Run `action` on the simulator's loop and wait until it ran."""
        if self._loop is None:
            raise RuntimeError("the simulator is not running")
        done = threading.Event()

        def run() -> None:
            try:
                action()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("the simulator's loop did not answer")

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
