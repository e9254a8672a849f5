"""Modbus TCP over asyncio for batched polls: one event loop per process, in a thread of its
own, keeping one connection per (host, port) open across batches.

A batch hands its coroutines to the loop and waits; every device of the batch is then read
concurrently, while each connection still carries one request at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from pymodbus.client import AsyncModbusTcpClient

from .errors import DeviceExceptionResponse, GatewayUnreachable, ModbusError
from .modbus import READERS, Endpoint, as_modbus_error, payload_of, where_of
from .plan import Request

T = TypeVar("T")


class AsyncModbusPool:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Lock()
        self._clients: dict[Endpoint, AsyncModbusTcpClient] = {}
        self._busy: dict[Endpoint, asyncio.Lock] = {}
        #: Set when the device closes the connection (pymodbus would only time out).
        self._lost: dict[Endpoint, asyncio.Event] = {}

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
        self, host: str, port: int, timeout: float, requests: list[Request]
    ) -> list[Any]:
        """Run `requests` in order on the endpoint's connection; errors as in ModbusPool."""
        endpoint = (host, port)
        busy = self._busy.setdefault(endpoint, asyncio.Lock())
        async with busy:
            client = await self._connected(endpoint, timeout)
            lost = self._lost[endpoint]
            try:
                return [await _read_one(client, lost, request, host, port) for request in requests]
            except ModbusError as exc:
                if not isinstance(exc, DeviceExceptionResponse):
                    self._discard(endpoint)  # out of step after a timeout or a reset
                raise
            except BaseException:  # a cancelled read too leaves the stream out of step
                self._discard(endpoint)
                raise

    async def _connected(self, endpoint: Endpoint, timeout: float) -> AsyncModbusTcpClient:
        client = self._clients.get(endpoint)
        fresh = client is not None and client.comm_params.timeout_connect == timeout
        if client is not None and fresh and client.connected:
            return client
        if client is not None:
            self._discard(endpoint)
        host, port = endpoint
        lost = asyncio.Event()

        def on_connect(up: bool) -> None:
            if not up:
                lost.set()

        # reconnect_delay=0: no reconnecting behind our back; the next poll reconnects.
        client = AsyncModbusTcpClient(
            host, port=port, timeout=timeout, retries=0, reconnect_delay=0, trace_connect=on_connect
        )
        try:
            connected = await asyncio.wait_for(client.connect(), timeout)
        except (OSError, TimeoutError) as exc:
            client.close()
            raise GatewayUnreachable(f"cannot connect to {host}:{port}: {exc}") from None
        if not connected:
            client.close()
            raise GatewayUnreachable(f"cannot connect to {host}:{port}")
        self._clients[endpoint], self._lost[endpoint] = client, lost
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


async def _read_one(
    client: AsyncModbusTcpClient, lost: asyncio.Event, request: Request, host: str, port: int
) -> list[int] | list[bool]:
    where = where_of(request, host, port)
    if lost.is_set():
        raise GatewayUnreachable(f"connection lost reading {where}: closed by the device")
    reader = getattr(client, READERS[request.register])
    read = asyncio.ensure_future(
        reader(request.address, count=request.count, device_id=request.device_id)
    )
    closed = asyncio.ensure_future(lost.wait())
    try:
        await asyncio.wait((read, closed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
    if not read.done():
        read.cancel()
        raise GatewayUnreachable(f"connection lost reading {where}: closed by the device")
    try:
        response = read.result()
    except Exception as exc:
        raise as_modbus_error(exc, where) from None
    return payload_of(response, request, where)
