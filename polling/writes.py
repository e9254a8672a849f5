"""Writing one point's value to its device (`pollctl write`), and the record of every write.

A write takes the endpoint's lock exactly as a poll does (`Keys.endpoint_lock`, set by
`chain_lock.lua`, released by compare-and-set), so on a gateway that serves one request at
a time a write never interleaves with a poll: it waits for the poll that holds the lock, at
most the gateway's timeout plus one poll budget. Under the lock it reads the point, writes
it (holding registers: function 16, or 6 for devices that want one register per write;
a coil: function 5, or 15 with one bit for devices without 5), and reads it back.

Refused writes (unknown gateway or point, a read-only register, a value that does not fit
the point's type) are refused before anything is sent and are not recorded: the record
holds what reached, or was meant to reach, a device.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pymodbus.client.base import ModbusBaseClient
from sqlalchemy import select

from . import codec
from .chains import EndpointLock
from .errors import DeviceExceptionResponse, GatewayNotFound, ModbusError, PollingError
from .gateways import Point
from .modbus import READERS, ModbusPool, as_modbus_error, payload_of
from .models import WriteRow, utcnow
from .plan import PollTarget, Request
from .runtime import Runtime
from .service import select_gateways
from .transports import make_client
from .values import cell, shown

#: Registers that can be written; the others (input registers, discrete inputs) are read-only.
WRITABLE = ("holding", "coil")
#: Pause between tries of an endpoint lock a poll holds.
LOCK_RETRY_S = 0.01


class WriteRefused(PollingError):
    """Raised when a write is refused before anything is sent; the message names why."""


@dataclass(frozen=True)
class WriteResult:
    gateway: str
    point: str
    #: As the point shows them (`values.cell`); old is None when it could not be read.
    old: str | None
    new: str
    read_back: str | None
    #: ok | mismatch (read back differs) | failed (device error) | busy (lock not free)
    outcome: str
    error: str | None = None


@dataclass(frozen=True)
class Planned:
    """A write checked and encoded, ready to send."""

    target: PollTarget
    point: Point
    device_id: int
    #: Registers (holding) or bits (coil) to write from the point's address.
    payload: list[int] | list[bool]
    new: str
    single: bool


#: Function 16 carries at most 123 registers (a string point may read up to 125).
MAX_WRITE_REGISTERS = 123


def plan_write(rt: Runtime, gateway: str, point_name: str, value: str) -> Planned:
    """Check a write against the gateway's map and encode it; WriteRefused (or
    GatewayNotFound) with one line naming the gateway, point or value otherwise."""
    try:
        target = select_gateways(rt, [gateway])[0]
    except GatewayNotFound:
        raise WriteRefused(f"unknown gateway: {gateway}") from None
    point = next((p for p in target.config.points if p.name == point_name), None)
    if point is None:
        raise WriteRefused(f"gateway {gateway} has no point {point_name}")
    if point.register not in WRITABLE:
        raise WriteRefused(
            f"{gateway}/{point_name} is a read-only {point.register} "
            f"{'input' if point.register == 'discrete' else 'register'}"
        )
    try:
        if point.register == "coil":
            payload: list[int] | list[bool] = [bool(codec.unscaled(value, "bool", 1, 0))]
        else:
            payload = codec.encode_point(
                value, point.type, point.order, point.count, point.scale, point.offset
            )
    except ValueError as exc:
        raise WriteRefused(f"{gateway}/{point_name}: {exc}") from None
    new = _shown(point, payload)
    single = target.config.single_register_write
    if not single and len(payload) > MAX_WRITE_REGISTERS:
        raise WriteRefused(
            f"{gateway}/{point_name}: {len(payload)} registers are more than one write "
            f"carries ({MAX_WRITE_REGISTERS}); set single_register_write: true to write "
            "them one at a time"
        )
    device_id = point.device_id if point.device_id is not None else target.config.device_id
    return Planned(target, point, device_id, payload, new, single)


def write(
    rt: Runtime,
    planned: Planned,
    *,
    user: str,
    waiting: Callable[[], None] | None = None,
    wait_s: float | None = None,
    pool: ModbusPool | None = None,
) -> WriteResult:
    """Send a planned write under the endpoint's lock and record it (whatever its outcome).
    The lock is waited for at most `wait_s` (default: the gateway's timeout plus one poll
    budget); `waiting` is called once if a poll holds it (tests watch for it). With `pool`
    (a worker's), the write goes over the connection the polls use; else over one of its
    own."""
    target = planned.target
    host, port = target.endpoint
    bound_s = target.config.timeout + target.budget if wait_s is None else wait_s
    # Held through connect, read, each write request and the read back, each at most the
    # gateway's timeout.
    exchanges = 3 + (len(planned.payload) if planned.single else 1)
    ttl_ms = round(1000 * (exchanges * target.config.timeout + 1))
    lock = EndpointLock(rt.keys.endpoint_lock(host, port), uuid.uuid4().hex, ttl_ms)
    at = utcnow()
    try:
        if not _take(rt, lock, bound_s, waiting):
            busy = f"endpoint {host}:{port} busy: a poll held its lock for {bound_s:.1f} s"
            result = _result(planned, None, None, "busy", busy)
        elif pool is not None:
            result = pool.run(_pooled(pool, planned, host, port))
        else:
            result = asyncio.run(_exchange(planned, host, port))
    finally:
        rt.chains.release([lock])
    _record(rt, result, user=user, at=at)
    return result


def _take(
    rt: Runtime, lock: EndpointLock, bound_s: float, waiting: Callable[[], None] | None
) -> bool:
    deadline = time.monotonic() + bound_s
    while rt.chains.take(lock) is None:
        if waiting is not None:
            waiting()
            waiting = None
        if time.monotonic() >= deadline:
            return False
        time.sleep(LOCK_RETRY_S)
    return True


async def _exchange(planned: Planned, host: str, port: int) -> WriteResult:
    """Read, write, read back, on a connection of its own (this process is no worker)."""
    config = planned.target.config
    timeout = config.timeout
    # The gateway's own transport (RTU framing, UDP, TLS, a serial line), as a poll's.
    client = make_client(config.transport, config.host, config.port, timeout, lambda _: None)
    try:
        try:
            connected = await asyncio.wait_for(client.connect(), timeout)
        except (OSError, TimeoutError) as exc:
            return _result(planned, None, None, "failed", f"cannot connect to {host}:{port}: {exc}")
        if not connected:
            return _result(planned, None, None, "failed", f"cannot connect to {host}:{port}")
        return await _read_write_read(client, planned, host, port)
    finally:
        client.close()


async def _pooled(pool: ModbusPool, planned: Planned, host: str, port: int) -> WriteResult:
    """Read, write, read back on a worker's own connection to the endpoint."""
    config = planned.target.config

    async def work(client: ModbusBaseClient) -> WriteResult:
        return await _read_write_read(client, planned, host, port)

    try:
        return await pool.use(config.host, config.port, config.timeout, config.transport, work)
    except ModbusError as exc:  # the connection itself (connect, a lost line)
        return _result(planned, None, None, "failed", str(exc))


async def _read_write_read(
    client: ModbusBaseClient, planned: Planned, host: str, port: int
) -> WriteResult:
    old: str | None = None
    try:
        old = _shown(planned.point, await _read(client, planned, host, port))
        await _send(client, planned, host, port)
        back = _shown(planned.point, await _read(client, planned, host, port))
    except ModbusError as exc:
        return _result(planned, old, None, "failed", str(exc))
    if back != planned.new:
        return _result(planned, old, back, "mismatch", f"read back {back}, not {planned.new}")
    return _result(planned, old, back, "ok", None)


def _request(planned: Planned) -> Request:
    return Request(
        planned.device_id, planned.point.register, planned.point.address, planned.point.width
    )


async def _read(
    client: ModbusBaseClient, planned: Planned, host: str, port: int
) -> list[int] | list[bool]:
    request = _request(planned)
    where = f"{planned.target.config.name}/{planned.point.name} ({request.register} " + (
        f"{request.address}) at {host}:{port}"
    )
    reader = getattr(client, READERS[request.register])
    try:
        response = await reader(request.address, count=request.count, device_id=request.device_id)
    except Exception as exc:
        raise as_modbus_error(exc, where) from None
    return payload_of(response, request, where)


async def _send(client: ModbusBaseClient, planned: Planned, host: str, port: int) -> None:
    request = _request(planned)
    where = (
        f"writing {planned.target.config.name}/{planned.point.name} "
        f"({request.register} {request.address}) at {host}:{port}"
    )
    address, device_id = request.address, request.device_id
    try:
        if request.register == "coil":
            bits = [bool(b) for b in planned.payload]
            if len(bits) == 1 and not planned.target.config.multiple_coil_write:
                response = await client.write_coil(address, bits[0], device_id=device_id)
            else:
                response = await client.write_coils(address, bits, device_id=device_id)
            _check(response, request, where)
        elif planned.single:
            # Function 6, one register per request, for devices without function 16.
            for i, word in enumerate(planned.payload):
                response = await client.write_register(address + i, int(word), device_id=device_id)
                _check(response, request, where)
        else:
            words = [int(w) for w in planned.payload]
            response = await client.write_registers(address, words, device_id=device_id)
            _check(response, request, where)
    except ModbusError as exc:
        raise _writing(exc) from None
    except Exception as exc:
        error = as_modbus_error(exc, where)
        raise (_writing(error) if isinstance(error, ModbusError) else error) from None


def _writing(error: ModbusError) -> ModbusError:
    """The error as the write's: modbus.py's messages say `reading`."""
    text = str(error).replace(" reading ", " ", 1)
    if isinstance(error, DeviceExceptionResponse):
        return DeviceExceptionResponse(
            text, function_code=error.function_code, exception_code=error.exception_code
        )
    return type(error)(text)


def _check(response: object, request: Request, where: str) -> None:
    if response.isError():  # type: ignore[attr-defined]
        payload_of(response, request, where)  # type: ignore[arg-type]  # raises ours


def _shown(point: Point, payload: Sequence[int] | Sequence[bool]) -> str:
    if point.register == "coil":
        return cell(bool(payload[0]))
    raw = codec.decode(list(payload), point.type, point.order)
    return cell(shown(point, codec.scaled(raw, point.scale, point.offset)))


def _result(
    planned: Planned, old: str | None, back: str | None, outcome: str, error: str | None
) -> WriteResult:
    name = planned.target.config.name
    return WriteResult(name, planned.point.name, old, planned.new, back, outcome, error)


def _record(rt: Runtime, result: WriteResult, *, user: str, at: datetime) -> None:
    with rt.sessions() as session, session.begin():
        session.add(
            WriteRow(
                at=at,
                user=user,
                gateway=result.gateway,
                point=result.point,
                old=result.old,
                new=result.new,
                read_back=result.read_back,
                outcome=result.outcome,
                error=result.error,
            )
        )


def recent(
    rt: Runtime, *, gateway: str | None = None, since: datetime | None = None, limit: int = 100
) -> list[WriteRow]:
    """The newest writes first, at most `limit`."""
    query = select(WriteRow).order_by(WriteRow.at.desc(), WriteRow.id.desc()).limit(limit)
    if gateway is not None:
        query = query.where(WriteRow.gateway == gateway)
    if since is not None:
        query = query.where(WriteRow.at >= since)
    with rt.sessions() as session:
        rows = list(session.scalars(query))
        session.expunge_all()
    return rows
