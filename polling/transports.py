"""A gateway's transport beyond plain Modbus TCP: its YAML keys, their validation, and the
pymodbus client that speaks it. Plain `tcp` never comes here on the poll path (ModbusPool
keeps its own client for it), so the 10,000-gateway hot path does no extra work.

YAML (per gateway):
  transport: tcp | rtu-over-tcp | udp | tls | serial      (default tcp)
  tls:    {ca: PATH, cert: PATH, key: PATH}               (tls only; ca required)
  serial: port: /dev/ttyUSB0 (a device path), baudrate, parity (N/E/O), stopbits (1/2),
          bytesize (7/8), handle_local_echo (bool; RS-485 adapters that echo)
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TRANSPORTS = ("tcp", "rtu-over-tcp", "udp", "tls", "serial")
NETWORK = ("tcp", "rtu-over-tcp", "udp", "tls")
SERIAL_FIELDS = {"baudrate", "parity", "stopbits", "bytesize", "handle_local_echo"}
TRANSPORT_FIELDS = {"transport", "tls"} | SERIAL_FIELDS
TLS_KEYS = ("ca", "cert", "key")
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
SERIAL_DEFAULTS: dict[str, Any] = {
    "baudrate": 19200,
    "parity": "N",
    "stopbits": 1,
    "bytesize": 8,
    "handle_local_echo": False,
}


@dataclass(frozen=True)
class Transport:
    """How to reach a gateway other than by the host/port pair: `kind` and its options
    (sorted pairs, so a Transport is hashable and serves in a pool's key)."""

    kind: str = "tcp"
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def serial(self) -> bool:
        return self.kind == "serial"

    @property
    def rtu(self) -> bool:
        """RTU framing: no transaction id, an answer's device id is all that ties it to
        its request."""
        return self.kind in ("rtu-over-tcp", "serial")

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    def with_device(self, device: str | None) -> Transport:
        return Transport.of(self.kind, {**self.as_json(), "device": device})

    def as_json(self) -> dict[str, Any]:
        return dict(self.options)

    @classmethod
    def of(cls, kind: str | None, options: dict[str, Any] | None = None) -> Transport:
        return cls(kind or "tcp", tuple(sorted((options or {}).items())))


TCP = Transport()

Bad = Callable[[str, str], None]


def parse_transport(data: dict[str, Any], bad: Bad) -> tuple[Transport, Any]:
    """The entry's transport and its `port` (an int for network transports, a device path
    for serial), reporting every fault through `bad(field, message)`; None port on faults."""
    kind = data.get("transport", "tcp")
    if kind is None:
        kind = "tcp"
    if not isinstance(kind, str) or kind not in TRANSPORTS:
        bad("transport", f"must be one of {', '.join(TRANSPORTS)}, got {kind!r}")
        return TCP, None
    for key in sorted(SERIAL_FIELDS & set(data)) if kind != "serial" else ():
        bad(key, f"only for transport serial, not {kind}")
    if kind != "tls" and "tls" in data:
        bad("tls", f"only for transport tls, not {kind}")
    if kind == "serial":
        return _serial(data, bad)
    port = data.get("port", 802 if kind == "tls" else 502)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        bad("port", f"must be a TCP/UDP port between 1 and 65535, got {port!r}")
        port = None
    if kind == "tls":
        return Transport.of("tls", _tls(data.get("tls"), bad)), port
    return (TCP if kind == "tcp" else Transport(kind)), port


def _tls(raw: Any, bad: Bad) -> dict[str, Any]:
    if not isinstance(raw, dict):
        bad("tls", "required for transport tls: a mapping with ca, cert and key paths")
        return {}
    for key in sorted(set(raw) - set(TLS_KEYS), key=str):
        bad(f"tls.{key}", "unknown field")
    options = {}
    for key in TLS_KEYS:
        value = raw.get(key)
        if value is None and key == "ca":
            bad("tls.ca", "is required (the CA that signed the gateway's certificate)")
        elif value is not None and (not isinstance(value, str) or not value.strip()):
            bad(f"tls.{key}", f"expected a file path, got {value!r}")
        elif value is not None:
            options[key] = value
    if ("cert" in options) != ("key" in options):
        bad("tls.key" if "cert" in options else "tls.cert", "cert and key go together")
    return options


def _serial(data: dict[str, Any], bad: Bad) -> tuple[Transport, Any]:
    port = data.get("port")
    if not isinstance(port, str) or not port.startswith("/"):
        bad("port", f"transport serial needs a device path (e.g. /dev/ttyUSB0), got {port!r}")
        port = None
    options = dict(SERIAL_DEFAULTS)
    rules: dict[str, tuple[Any, ...]] = {
        "baudrate": BAUDRATES,
        "parity": ("N", "E", "O"),
        "stopbits": (1, 2),
        "bytesize": (7, 8),
        "handle_local_echo": (True, False),
    }
    for key, allowed in rules.items():
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, bool) != (key == "handle_local_echo") or value not in allowed:
            bad(key, f"must be one of {', '.join(map(str, allowed))}, got {value!r}")
        else:
            options[key] = value
    return Transport.of("serial", options), port


def endpoint_of(transport: Transport, host: str, port: Any, worker_host: str) -> tuple:
    """The lock key of a gateway's line: (host, port) for a network transport, and for a
    serial bus (the worker's host, the device path) - one bus, one request at a time."""
    if transport.serial:
        return (worker_host, port)
    return (host, port)


#: A serial port exists on one host: its lock names the host whose worker opens it.
WORKER_HOST = socket.gethostname()


def serial_endpoint(transport: Transport) -> tuple[str, Any]:
    return WORKER_HOST, transport.option("device")


def make_client(
    transport: Transport,
    host: str,
    port: Any,
    timeout: float,
    trace_connect: Callable[[bool], None],
) -> Any:
    """The pymodbus client for `transport`, never retrying or reconnecting on its own (the
    next poll reconnects), as ModbusPool's own TCP client. For serial the device is the
    transport's `device` option when it has one (a stored gateway), else `port`."""
    # Imported here: the Gateway model carries a Transport and needs no pymodbus.
    from pymodbus import FramerType
    from pymodbus.client import (
        AsyncModbusSerialClient,
        AsyncModbusTcpClient,
        AsyncModbusTlsClient,
        AsyncModbusUdpClient,
    )

    common: dict[str, Any] = dict(
        timeout=timeout, retries=0, reconnect_delay=0, trace_connect=trace_connect
    )
    kind = transport.kind
    if kind == "tcp":
        return AsyncModbusTcpClient(host, port=port, **common)
    if kind == "rtu-over-tcp":
        return AsyncModbusTcpClient(host, port=port, framer=FramerType.RTU, **common)
    if kind == "udp":
        return AsyncModbusUdpClient(host, port=port, **common)
    if kind == "tls":
        return AsyncModbusTlsClient(host, port=port, sslctx=ssl_context(transport), **common)
    if kind == "serial":
        options = transport.as_json()
        device = options.pop("device", port)
        return AsyncModbusSerialClient(device, framer=FramerType.RTU, **options, **common)
    raise ValueError(f"unknown transport {kind!r}")


def ssl_context(transport: Transport) -> ssl.SSLContext:
    """A client context verifying the gateway against `ca`, presenting cert/key if given."""
    context = ssl.create_default_context(cafile=transport.option("ca"))
    if transport.option("cert"):
        context.load_cert_chain(transport.option("cert"), transport.option("key"))
    return context


def describe(transport: Transport, host: str, port: Any) -> str:
    """Where a gateway is, for messages: host:port, or the transport and serial device."""
    if transport.kind == "tcp":
        return f"{host}:{port}"
    if transport.serial:
        return f"serial {transport.option('device', port)}"
    return f"{transport.kind} {host}:{port}"


def transport_of(kind: str | None, options: dict[str, Any] | None) -> Transport:
    """A stored gateway's transport from its row's columns (tcp for rows before 0009)."""
    if (kind or "tcp") == "tcp" and not options:
        return TCP
    return Transport.of(kind, options)
