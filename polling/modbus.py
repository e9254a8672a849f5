"""The Modbus TCP client: one asyncio loop per process, in a thread of its own, keeping one
connection per (host, port) open across polls; and the one place where pymodbus's two
error channels (a raised exception for I/O, an answer with `isError()` when the device
says no) become our errors.

A batch hands its coroutines to the loop and waits; every device of the batch is then read
concurrently, while each connection still carries one request at a time (pymodbus clients
are not thread safe, and many gateways serve one request at a time).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from .errors import DeviceExceptionResponse, GatewayTimeout, GatewayUnreachable, ModbusError
from .plan import Request
from .transports import Transport, make_client

T = TypeVar("T")

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
READERS = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}

# (host, port) for plain TCP, as ever; (transport, host, port) for any other, so a tcp and
# an rtu-over-tcp gateway at one host:port never share a client.
Endpoint = tuple[Any, ...]


def where_of(request: Request, host: str, port: int) -> str:
    return (
        f"{request.register} {request.address}..{request.end} "
        f"of device {request.device_id} at {host}:{port}"
    )


def as_modbus_error(exc: Exception, where: str) -> Exception:
    """pymodbus's exceptions (and a reset socket's OSError) as ours; others unchanged."""
    if isinstance(exc, ConnectionException):
        return GatewayUnreachable(f"connection lost reading {where}: {_reason(exc)}")
    if isinstance(exc, OSError):  # a reset socket's error may come through as is
        return GatewayUnreachable(f"connection lost reading {where}: {exc}")
    if isinstance(exc, ModbusIOException):
        return GatewayTimeout(f"no valid answer reading {where}: {_reason(exc)}")
    if isinstance(exc, ModbusException):
        return GatewayUnreachable(f"error reading {where}: {_reason(exc)}")
    return exc


def payload_of(response: ModbusPDU, request: Request, where: str) -> list[int] | list[bool]:
    """The registers (or bits) of an answer; an exception answer or a short one is an error."""
    if response.isError():
        code = getattr(response, "exception_code", 0)
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        raise DeviceExceptionResponse(
            f"device answered exception {code} ({name}) reading {where}",
            function_code=response.function_code & 0x7F,
            exception_code=code,
        )
    if request.register in ("coil", "discrete"):
        return list(response.bits[: request.count])
    registers = list(response.registers)
    if len(registers) < request.count:
        raise GatewayTimeout(f"short answer reading {where}: {len(registers)} registers")
    return registers


def _reason(exc: Exception) -> str:
    text = str(exc).replace("Modbus Error: ", "").strip()
    return text or type(exc).__name__


class ModbusPool:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Lock()
        self._clients: dict[Endpoint, Any] = {}
        self._busy: dict[Endpoint, asyncio.Lock] = {}
        self._links: dict[Endpoint, _Link] = {}

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the pool's loop and wait for its result (from any other thread)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._running_loop())
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._started:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="pollctl-modbus", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def read(
        self,
        host: str,
        port: int,
        timeout: float,
        requests: list[Request],
        transport: Transport | None = None,
    ) -> list[Any]:
        """Run `requests` in order on the endpoint's connection; errors as our ModbusError.
        `transport` None (or tcp) is plain Modbus TCP; for serial, `port` is the device."""

        rtu = transport is not None and transport.rtu

        async def read_all(client: Any, link: _Link) -> list[Any]:
            return [
                await _read_one(client, link, request, host, port, rtu=rtu) for request in requests
            ]

        return await self._on(_endpoint(host, port, transport), timeout, read_all)

    async def use(
        self,
        host: str,
        port: int,
        timeout: float,
        transport: Transport | None,
        work: Callable[[Any], Awaitable[T]],
    ) -> T:
        """`work(client)` on the endpoint's own connection, taking turns with the polls (a
        write in a worker: a serial line or a one-connection device has no room for a
        second client)."""
        return await self._on(_endpoint(host, port, transport), timeout, lambda c, _: work(c))

    async def _on(
        self, endpoint: Endpoint, timeout: float, work: Callable[[Any, _Link], Awaitable[T]]
    ) -> T:
        busy = self._busy.get(endpoint)
        if busy is None:
            busy = self._busy[endpoint] = asyncio.Lock()
        async with busy:
            client = await self._connected(endpoint, timeout)
            try:
                return await work(client, self._links[endpoint])
            except ModbusError as exc:
                if not isinstance(exc, DeviceExceptionResponse):
                    self._discard(endpoint)  # out of step after a timeout or a reset
                raise
            except BaseException:  # a cancelled read too leaves the stream out of step
                self._discard(endpoint)
                raise
            finally:
                if _is_serial(endpoint):
                    # A serial port has room for one client: open only while the bus's
                    # lock is held, or another worker of this host (its own pool, its own
                    # reader on the line) would take this one's answers.
                    self._discard(endpoint)

    async def _connected(self, endpoint: Endpoint, timeout: float) -> Any:
        client = self._clients.get(endpoint)
        fresh = client is not None and client.comm_params.timeout_connect == timeout
        if client is not None and fresh and client.connected:
            return client
        if client is not None:
            self._discard(endpoint)
        transport, host, port = endpoint if len(endpoint) == 3 else (None, *endpoint)
        link = _Link()

        def on_connect(up: bool) -> None:
            if not up:
                link.drop()

        # reconnect_delay=0: no reconnecting behind our back; the next poll reconnects.
        if transport is None:
            client = AsyncModbusTcpClient(
                host,
                port=port,
                timeout=timeout,
                retries=0,
                reconnect_delay=0,
                trace_connect=on_connect,
            )
        else:
            client = make_client(transport, host, port, timeout, on_connect)
        try:
            connected = await asyncio.wait_for(client.connect(), timeout)
        except (OSError, TimeoutError) as exc:
            client.close()
            raise GatewayUnreachable(f"cannot connect to {host}:{port}: {exc}") from None
        if not connected:
            client.close()
            raise GatewayUnreachable(f"cannot connect to {host}:{port}")
        self._clients[endpoint], self._links[endpoint] = client, link
        return client

    def _discard(self, endpoint: Endpoint) -> None:
        client = self._clients.pop(endpoint, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def close_all() -> None:
            for endpoint in list(self._clients):
                self._discard(endpoint)

        asyncio.run_coroutine_threadsafe(close_all(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = self._thread = None


def _is_serial(endpoint: Endpoint) -> bool:
    return len(endpoint) == 3 and endpoint[0].serial


def _endpoint(host: str, port: int, transport: Transport | None) -> Endpoint:
    """Plain tcp keeps its (host, port) key; other transports add themselves to it."""
    if transport is None or transport.kind == "tcp":
        return (host, port)
    return (transport, host, port)


class _Link:
    """A connection's state seen from the reads: whether the device closed it, and the read
    in flight, cancelled when it does (pymodbus itself would only time out)."""

    def __init__(self) -> None:
        self.lost = False
        self.reading: asyncio.Future[Any] | None = None

    def drop(self) -> None:
        self.lost = True
        if self.reading is not None:
            self.reading.cancel()


async def _read_one(
    client: Any, link: _Link, request: Request, host: str, port: int, *, rtu: bool = False
) -> list[int] | list[bool]:
    where = where_of(request, host, port)
    if link.lost:
        raise GatewayUnreachable(f"connection lost reading {where}: closed by the device")
    reader = getattr(client, READERS[request.register])
    read = asyncio.ensure_future(
        reader(request.address, count=request.count, device_id=request.device_id)
    )
    link.reading = read
    try:
        response = await read
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if link.lost and (task is None or not task.cancelling()):
            raise GatewayUnreachable(
                f"connection lost reading {where}: closed by the device"
            ) from None
        raise  # the poll itself was cancelled (its deadline passed)
    except Exception as exc:
        raise as_modbus_error(exc, where) from None
    finally:
        link.reading = None
    if rtu and response.dev_id != request.device_id:
        # pymodbus skips another device's frame, but for device 0 (RTU's broadcast address,
        # which no device answers) it takes any: an answer from the wrong device.
        raise GatewayTimeout(
            f"no valid answer reading {where}: the answer came from device {response.dev_id}"
        )
    return payload_of(response, request, where)
