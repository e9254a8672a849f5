"""The Modbus TCP client side: reused connections, reconnect backoff, and the one place
where pymodbus's two error channels become our errors."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from .errors import DeviceExceptionResponse, GatewayTimeout, GatewayUnreachable, ModbusError
from .plan import Request

log = logging.getLogger(__name__)

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

Endpoint = tuple[str, int]


class ModbusPool:
    """One client per (host, port) in this process, reused across polls.

    pymodbus clients are not thread safe: callers use a client only while holding the
    endpoint's Redis lock, which also keeps other processes off the same connection.
    """

    def __init__(self, *, connect_attempts: int = 3) -> None:
        self._clients: dict[Endpoint, ModbusTcpClient] = {}
        self._guard = threading.Lock()
        self.connect_attempts = connect_attempts

    def read(self, host: str, port: int, timeout: float, requests: list[Request]) -> list[Any]:
        """Run `requests` in order and return each one's registers (or bits)."""
        client = self._connected(host, port, timeout)
        try:
            return [_read_one(client, request) for request in requests]
        except ModbusError as exc:
            if not isinstance(exc, DeviceExceptionResponse):
                # A timed-out or broken exchange leaves the stream out of step: start afresh.
                self.discard(host, port)
            raise

    def _connected(self, host: str, port: int, timeout: float) -> ModbusTcpClient:
        with self._guard:
            client = self._clients.get((host, port))
            if client is None or client.comm_params.timeout_connect != timeout:
                if client is not None:
                    client.close()
                client = ModbusTcpClient(host, port=port, timeout=timeout, retries=0)
                self._clients[(host, port)] = client
        if client.connected:
            return client
        retrying = Retrying(
            stop=stop_after_attempt(self.connect_attempts) | stop_after_delay(timeout),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_exception_type(GatewayUnreachable),
            reraise=True,
        )
        retrying(_connect, client, host, port)
        return client

    def discard(self, host: str, port: int) -> None:
        with self._guard:
            client = self._clients.pop((host, port), None)
        if client is not None:
            client.close()

    def close(self) -> None:
        with self._guard:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def _connect(client: ModbusTcpClient, host: str, port: int) -> None:
    try:
        connected = client.connect()
    except OSError as exc:
        raise GatewayUnreachable(f"cannot connect to {host}:{port}: {exc}") from None
    if not connected:
        raise GatewayUnreachable(f"cannot connect to {host}:{port}")


def where_of(request: Request, host: str, port: int) -> str:
    return (
        f"{request.register} {request.address}..{request.end} "
        f"of device {request.device_id} at {host}:{port}"
    )


def _read_one(client: ModbusTcpClient, request: Request) -> list[int] | list[bool]:
    reader: Callable[..., ModbusPDU] = getattr(client, READERS[request.register])
    where = where_of(request, client.comm_params.host or "", client.comm_params.port)
    try:
        response = reader(request.address, count=request.count, device_id=request.device_id)
    except Exception as exc:
        raise as_modbus_error(exc, where) from None
    return payload_of(response, request, where)


def as_modbus_error(exc: Exception, where: str) -> Exception:
    """pymodbus's exceptions (and a reset socket's OSError) as ours; others unchanged."""
    if isinstance(exc, ConnectionException):
        return GatewayUnreachable(f"connection lost reading {where}: {_reason(exc)}")
    if isinstance(exc, OSError):  # the sync client lets a reset socket's error through
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
