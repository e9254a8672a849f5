"""A fault-injecting TCP proxy on loopback, in front of a simulated device, Redis or
PostgreSQL: pass, refuse, blackhole, drop, slow, tid0 (Modbus), rtu (RTU answers spoiled per
device id: `bad_crc`, `wrong_id`, see tests/rtuframes.py) and single-connection modes.
It runs its own asyncio loop on a daemon thread; `stop()` closes everything and joins it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading

from tests.rtuframes import spoil_answers

MODES = ("pass", "refuse", "blackhole", "drop", "slow", "tid0", "rtu", "single")


class FaultProxy:
    def __init__(self, target: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self.host = host
        self.port = port
        self.mode = "pass"
        self.delay = 0.0
        self.accepted = 0
        #: In mode rtu: device ids whose answers get a broken CRC, and device id -> the id
        #: its answers are rewritten to (with a good CRC); answers spoiled so far.
        self.bad_crc: set[int] = set()
        self.wrong_id: dict[int, int] = {}
        self.spoiled = 0
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._tasks: set[asyncio.Task] = set()
        self._clients: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fault-proxy", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def connections(self) -> int:
        return len(self._conns)

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def set(self, mode: str, *, delay: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown fault mode {mode!r}")
        self._call(self._switch(mode, delay))

    def cut(self) -> None:
        self._call(self._cut())

    # -- on the loop -----------------------------------------------------------------------

    def _call(self, coro) -> None:  # type: ignore[no-untyped-def]
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._client, sock=sock)

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _switch(self, mode: str, delay: float) -> None:
        self.mode, self.delay = mode, delay
        if mode == "refuse":
            await self._unlisten()
        elif self._server is None:
            await self._listen()
        if mode in ("refuse", "drop"):
            await self._cut()

    async def _cut(self) -> None:
        for client, upstream in list(self._conns):
            for writer in (client, upstream):
                if writer is not None:
                    writer.transport.abort()
        self._conns.clear()

    async def _shutdown(self) -> None:
        await self._unlisten()
        await self._cut()
        for client in list(self._clients):
            client.transport.abort()  # every handler then ends on its own
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=3)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._clients.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            self._clients.discard(writer)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "drop" or (self.mode == "single" and self._conns):
            return
        if self.mode == "blackhole":
            while await reader.read(65536):
                pass  # swallowed: the client waits for an answer that never comes
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            return
        pair = (writer, up_writer)
        self._conns.add(pair)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, upstream=False),
                self._pipe(up_reader, writer, upstream=True),
            )
        finally:
            self._conns.discard(pair)
            up_writer.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        """Copy one direction until either side closes; `upstream` is server -> client."""
        pending = b""
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if self.mode == "blackhole":
                    continue
                if upstream and self.mode == "slow" and self.delay:
                    await asyncio.sleep(self.delay)
                if upstream and self.mode == "tid0":
                    pending += data
                    data, pending = _zero_transaction_ids(pending)
                if upstream and self.mode == "rtu":
                    pending += data
                    data, pending, spoiled = spoil_answers(
                        pending, bad_crc=self.bad_crc, wrong_id=self.wrong_id
                    )
                    self.spoiled += spoiled
                if data:
                    writer.write(data)
                    await writer.drain()
        writer.transport.abort()


def _zero_transaction_ids(buffer: bytes) -> tuple[bytes, bytes]:
    """Whole MBAP frames of `buffer` with transaction id 0, and the incomplete rest."""
    out = bytearray()
    while len(buffer) >= 7:
        length = struct.unpack(">H", buffer[4:6])[0]
        end = 6 + length
        if len(buffer) < end:
            break
        out += b"\x00\x00" + buffer[2:end]
        buffer = buffer[end:]
    return bytes(out), buffer
