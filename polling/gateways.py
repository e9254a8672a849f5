"""Gateways and their register maps, as configured (the gateways file's model; its parsing
and validation is `gatewayfile`)."""

from __future__ import annotations

from dataclasses import dataclass

from . import codec
from .sites import DEFAULT_SITE
from .transports import TCP, TRANSPORT_FIELDS, Transport

REGISTERS = ("holding", "input", "coil", "discrete")
MAX_ADDRESS = 65535
DEFAULT_TIMEOUT = 3.0

GATEWAY_FIELDS = {
    "name", "host", "port", "device_id", "interval", "timeout", "enabled", "points", "site",
} | TRANSPORT_FIELDS  # fmt: skip
#: `pollctl write`: devices without function 16 take holding registers one at a time (6).
GATEWAY_FIELDS |= {"single_register_write"}
#: ... and devices without function 5 take a coil as a write of several coils, of one (15).
GATEWAY_FIELDS |= {"multiple_coil_write"}
POINT_FIELDS = {
    "name",
    "register",
    "address",
    "type",
    "order",
    "count",
    "scale",
    "offset",
    "unit",
    "device_id",
    "min",
    "max",
    "flatline",
}


@dataclass(frozen=True)
class Point:
    name: str
    register: str
    address: int
    type: str = "uint16"
    order: str = "ABCD"
    count: int | None = None
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    device_id: int | None = None
    #: Data rules for alerts: a value below `min` or above `max`; the same value for
    #: `flatline` polls in a row.
    min: float | None = None
    max: float | None = None
    flatline: int | None = None

    @property
    def width(self) -> int:
        """Registers (or bits, for coils and discrete inputs) the point occupies."""
        if self.register in ("coil", "discrete"):
            return 1
        return codec.width(self.type, self.count)


@dataclass(frozen=True)
class Gateway:
    name: str
    host: str
    interval: float
    points: tuple[Point, ...]
    port: int = 502
    device_id: int = 1
    timeout: float = DEFAULT_TIMEOUT
    enabled: bool = True
    #: The network it lives on: only workers serving this site poll it (polling/sites.py).
    site: str = DEFAULT_SITE
    #: tcp unless the file says otherwise (polling/transports.py); a serial gateway's device
    #: path is its `device` option, and its port 0.
    transport: Transport = TCP
    #: Writes send each holding register alone (function 6), not all at once (16).
    single_register_write: bool = False
    #: Writes send a coil as a write of several coils (function 15, one bit), not as one (5).
    multiple_coil_write: bool = False
