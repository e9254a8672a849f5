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
        self, host: str, port: int, timeout: float, requests: list[Request]
    ) -> list[Any]:
        """Run `requests` in order on the endpoint's connection; errors as in ModbusPool."""
        endpoint = (host, port)
        busy = self._busy.get(endpoint)
        if busy is None:
            busy = self._busy[endpoint] = asyncio.Lock()
        async with busy:
            client = await self._connected(endpoint, timeout)
            link = self._links[endpoint]
            try:
                return [await _read_one(client, link, request, host, port) for request in requests]
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
        link = _Link()

        def on_connect(up: bool) -> None:
            if not up:
                link.drop()

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
    client: AsyncModbusTcpClient, link: _Link, request: Request, host: str, port: int
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
    return payload_of(response, request, where)
