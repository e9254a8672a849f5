"""The gateways YAML file: read, validated as a whole (every fault one line naming the file,
gateway, point and field), and turned into `Gateway`s."""

from __future__ import annotations

import codecs
import ipaddress
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import codec
from .errors import ConfigError
from .gateways import (
    DEFAULT_TIMEOUT,
    GATEWAY_FIELDS,
    MAX_ADDRESS,
    POINT_FIELDS,
    REGISTERS,
    Gateway,
    Point,
)
from .gatewaystream import NotAList, Progress, read_entries
from .sites import DEFAULT_SITE, site_problem
from .transports import TCP, TRANSPORT_FIELDS, Transport, parse_transport

#: The device ids a read on an RTU line can be answered from (Modbus over serial line).
RTU_DEVICE_IDS = (1, 247)


class _Errors:
    """Collects every problem of a file so one run reports them all (the first hundred,
    then a count: a generated file can be wrong ten thousand times)."""

    SHOWN = 100

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []
        self.count = 0

    def add(self, where: str, message: str) -> None:
        self.count += 1
        if self.count <= self.SHOWN:
            self.lines.append(f"{self.source}: {where}: {message}")

    def raise_any(self) -> None:
        if self.count > self.SHOWN:
            self.lines.append(f"{self.source}: and {self.count - self.SHOWN} more faults")
        if self.lines:
            raise ConfigError("\n".join(self.lines))


def load_gateways(
    path: str | Path, *, max_interval: float | None = None, min_interval: float = 0.001
) -> list[Gateway]:
    """Read and validate a whole gateways file; raise ConfigError naming every fault."""
    batches = stream_gateways(path, max_interval=max_interval, min_interval=min_interval)
    return [gateway for batch in batches for gateway in batch]


def stream_gateways(
    path: str | Path,
    *,
    max_interval: float | None = None,
    min_interval: float = 0.001,
    batch: int = 500,
    progress: Progress | None = None,
) -> Iterator[list[Gateway]]:
    """The file's gateways, validated, `batch` at a time, in the memory of one batch. Every
    fault is raised at the end, after the last batch, as one ConfigError naming them all:
    a caller that writes batches does so in one transaction, and rolls it back."""
    path = _readable(Path(path))
    errors = _Errors(str(path))
    limits = (min_interval, max_interval)
    seen: set[str] = set()
    pending: list[Gateway] = []
    try:
        for index, entry in enumerate(read_entries(path, progress)):
            gateway = _gateway(entry, index, errors, limits)
            if gateway is None:
                continue
            if gateway.name in seen:
                errors.add(f"gateway '{gateway.name}'", "duplicate name")
            seen.add(gateway.name)
            pending.append(gateway)
            if len(pending) >= batch:
                yield pending
                pending = []
    except NotAList:
        raise ConfigError(f"{path}: expected a top-level 'gateways:' list") from None
    if pending:
        yield pending
    errors.raise_any()


def _readable(path: Path) -> Path:
    """`path` if it is a file of UTF-8 text; else one line saying what it is instead."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a gateways file")
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    try:
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    line += chunk[: exc.start].count(b"\n")
                    raise ConfigError(
                        f"{path}: line {line}: not UTF-8 text (byte 0x{chunk[exc.start]:02x}); "
                        "save it as UTF-8"
                    ) from None
                line += chunk.count(b"\n")
            decoder.decode(b"", final=True)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path}: line {line}: not UTF-8 text (cut short); save it as UTF-8"
        ) from None
    return path


def parse_gateways(
    document: Any,
    *,
    source: str = "<gateways>",
    max_interval: float | None = None,
    min_interval: float = 0.001,
) -> list[Gateway]:
    errors = _Errors(source)
    entries = document.get("gateways") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: expected a top-level 'gateways:' list")
    limits = (min_interval, max_interval)
    parsed = [_gateway(entry, i, errors, limits) for i, entry in enumerate(entries)]
    gateways = _unique(parsed, errors, "gateway '{}'")
    errors.raise_any()
    return gateways


class _Fields:
    """Typed access to one mapping's fields, reporting problems under `where`."""

    def __init__(self, data: dict, where: str, errors: _Errors) -> None:
        self.data, self.where, self.errors = data, where, errors

    def bad(self, key: str, message: str) -> None:
        self.errors.add(f"{self.where}: field '{key}'", message)

    def get(self, key: str, kinds: tuple[type, ...], default: Any = None, required: bool = False):
        if key not in self.data or self.data[key] is None:
            if required:
                self.bad(key, "is required")
            return default
        value = self.data[key]
        is_bool = isinstance(value, bool)
        if not isinstance(value, kinds) or (is_bool and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            self.bad(key, f"expected {names}, got {value!r}")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            self.bad(key, f"must be finite, got {value!r}")
            return default
        return value

    def number(self, key: str, default: Any = None, required: bool = False) -> Any:
        value = self.get(key, (int, float), default, required)
        return float(value) if value is not None else None

    def integer(
        self, key: str, low: int, high: int, default: Any = None, required: bool = False
    ) -> Any:
        value = self.get(key, (int,), default, required)
        if value is not None and not low <= value <= high:
            self.bad(key, f"must be between {low} and {high}, got {value}")
            return default
        return value

    def choice(self, key: str, options: tuple[str, ...], default: str | None) -> Any:
        value = self.get(key, (str,), default, required=default is None)
        if value is not None and value not in options:
            self.bad(key, f"must be one of {', '.join(options)}, got {value!r}")
            return default
        return value

    def unknown(self, allowed: set[str]) -> None:
        for key in sorted(set(self.data) - allowed, key=str):
            self.bad(str(key), "unknown field")


def _gateway(
    entry: Any, index: int, errors: _Errors, limits: tuple[float, float | None]
) -> Gateway | None:
    if not isinstance(entry, dict):
        errors.add(f"gateways[{index}]", "expected a mapping")
        return None
    name = _name(entry, f"gateways[{index}]", errors)
    if name is None:
        return None
    f = _Fields(entry, f"gateway '{name}'", errors)
    f.unknown(GATEWAY_FIELDS)
    host, port, transport = _endpoint(entry, f)
    device_id = f.integer("device_id", 0, 255, default=1)
    enabled = f.get("enabled", (bool,), default=True)
    site = _site(f)
    single_register_write = f.get("single_register_write", (bool,), default=False)
    multiple_coil_write = f.get("multiple_coil_write", (bool,), default=False)
    min_interval, max_interval = limits
    interval = f.number("interval", required=True)
    if interval is not None and interval <= 0:
        f.bad("interval", f"must be > 0 seconds, got {interval:g}")
    elif interval is not None and interval < min_interval:
        f.bad(
            "interval",
            f"{interval:g} s is below the shortest the poller serves, {min_interval:g} s "
            "(POLLING_MIN_INTERVAL)",
        )
    elif interval is not None and max_interval and interval > max_interval:
        f.bad(
            "interval",
            f"{interval:g} s exceeds the longest allowed, {max_interval:g} s "
            "(half of POLLING_VISIBILITY_TIMEOUT)",
        )
    timeout = f.number("timeout")
    if timeout is not None and timeout <= 0:
        f.bad("timeout", f"must be > 0 seconds, got {timeout:g}")
    elif timeout is not None and interval and timeout > interval:
        f.bad("timeout", f"{timeout:g} s is longer than the interval ({interval:g} s)")
    if timeout is None and interval:
        timeout = min(DEFAULT_TIMEOUT, interval)
    points = _points(entry.get("points"), name, errors)
    if transport.rtu:
        _check_rtu_ids(f, device_id, points)
    # On errors the caller refuses the whole file, so placeholders here are never stored.
    return Gateway(
        name=name,
        host=host or "",
        port=port,
        device_id=device_id,
        interval=interval or 1.0,
        timeout=timeout or DEFAULT_TIMEOUT,
        enabled=enabled,
        site=site,
        transport=transport,
        single_register_write=single_register_write,
        multiple_coil_write=multiple_coil_write,
        points=points,
    )


def _check_rtu_ids(f: _Fields, device_id: Any, points: Sequence[Point]) -> None:
    """On an RTU line, 0 is the broadcast address (no device answers a read of it) and
    248-255 are reserved: a poll of either could only time out."""
    low, high = RTU_DEVICE_IDS
    ids = [("device_id", device_id)]
    ids += [(f"points.{p.name}.device_id", p.device_id) for p in points]
    for key, value in ids:
        if isinstance(value, int) and not low <= value <= high:
            f.bad(
                key,
                f"{value} is no device on an RTU line ({f.data.get('transport')}): "
                f"ids {low} to {high} (0 is broadcast: no device answers it)",
            )


def _endpoint(entry: dict, f: _Fields) -> tuple[str | None, Any, Transport]:
    """host, port and transport; a serial gateway's port (its device path) moves into its
    transport's options, and it needs no host."""
    transport: Transport | None = None
    port: Any = 0
    if not TRANSPORT_FIELDS.isdisjoint(entry):
        transport, port = parse_transport(entry, f.bad)
    host = f.get("host", (str,), required=transport is None or not transport.serial)
    if host is not None and (why := host_problem(host)):
        f.bad("host", why)
    if transport is None:  # today's path, unchanged
        port = f.integer("port", 1, 65535, default=502)
    elif transport.serial:
        transport, port = transport.with_device(port), 0
    return host, port, transport or TCP


def _site(f: _Fields) -> str:
    site = f.get("site", (str,), default=DEFAULT_SITE)
    if why := site_problem(site):
        f.bad("site", why)
    return site


def _name(entry: dict, where: str, errors: _Errors) -> str | None:
    """The entry's name, or None (reported) when it has none or it is not a string."""
    name = entry.get("name")
    if name is not None and not isinstance(name, str):
        errors.add(f"{where}: field 'name'", f"expected a string, got {name!r}")
    elif name is None or not name.strip():
        errors.add(f"{where}: field 'name'", "is required (a non-empty string)")
    else:
        return name
    return None


def _points(entries: Any, gateway: str, errors: _Errors) -> tuple[Point, ...]:
    if not isinstance(entries, list) or not entries:
        errors.add(f"gateway '{gateway}': field 'points'", "expected a non-empty list")
        return ()
    parsed = [_point(entry, i, gateway, errors) for i, entry in enumerate(entries)]
    return tuple(_unique(parsed, errors, f"gateway '{gateway}': point '{{}}'"))


def _unique(items: list[Any], errors: _Errors, where: str) -> list[Any]:
    """The parsed items (None for those already reported), flagging repeated names."""
    seen: set[str] = set()
    for item in items:
        if item is not None and item.name in seen:
            errors.add(where.format(item.name), "duplicate name")
        if item is not None:
            seen.add(item.name)
    return [item for item in items if item is not None]


def _point(entry: Any, index: int, gateway: str, errors: _Errors) -> Point | None:
    where = f"gateway '{gateway}': points[{index}]"
    if not isinstance(entry, dict):
        errors.add(where, "expected a mapping")
        return None
    name = _name(entry, where, errors)
    if name is None:
        return None
    f = _Fields(entry, f"gateway '{gateway}': point '{name}'", errors)
    f.unknown(POINT_FIELDS)
    register = f.choice("register", REGISTERS, default="holding")
    is_bit = register in ("coil", "discrete")
    type_ = f.choice("type", codec.TYPES, default="bool" if is_bit else "uint16")
    if is_bit and type_ != "bool":
        f.bad("type", f"{register} points hold single bits: type must be bool, got {type_!r}")
    order = f.choice("order", codec.ORDERS, default="ABCD")
    count = f.get("count", (int,))
    if type_ == "string":
        if count is None:
            f.bad("count", "is required for string points (registers to read)")
        elif not 1 <= count <= 125:
            f.bad("count", f"must be between 1 and 125 registers, got {count}")
    elif count is not None:
        f.bad("count", f"applies to string points only, not {type_}")
        count = None
    address = f.integer("address", 0, MAX_ADDRESS, required=True)
    point = Point(
        name=name,
        register=register or "holding",
        address=address or 0,
        type=type_ or "uint16",
        order=order or "ABCD",
        count=count if type_ == "string" else None,
        scale=f.number("scale", default=1.0),
        offset=f.number("offset", default=0.0),
        unit=_unit(f),
        device_id=f.integer("device_id", 0, 255),
        **_data_rules(f, type_),
    )
    if address is not None and type_ and (type_ != "string" or count):
        last = address + point.width - 1
        if last > MAX_ADDRESS:
            f.bad("address", f"{address} + {point.width} registers runs past {MAX_ADDRESS}")
    return point


#: One DNS label: letters, digits and inner hyphens (underscores too: many site networks
#: name devices so), at most 63 characters.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def host_problem(host: str) -> str | None:
    """Why `host` is neither an IP address nor a DNS name, or None when it is one."""
    if not host.strip():
        return "is empty: expected an IP address or a DNS name"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    name = host.removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        return f"{host!r} is not an IP address or a DNS name"
    if labels[-1].isdigit():
        return f"{host!r} is not a valid IP address"
    return None


#: Largest `flatline` (polls): the alert rule reads this many readings per point.
MAX_FLATLINE = 10_000


def _data_rules(f: _Fields, type_: str | None) -> dict[str, Any]:
    """The point's optional alert limits: `min`, `max` (numbers, min <= max, not for
    strings) and `flatline` (polls unchanged, at least 2)."""
    low, high = f.number("min"), f.number("max")
    if type_ == "string":
        for key, value in (("min", low), ("max", high)):
            if value is not None:
                f.bad(key, "applies to numeric points only, not string")
        low = high = None
    if low is not None and high is not None and low > high:
        f.bad("min", f"{low:g} is above max {high:g}")
    flatline = f.integer("flatline", 2, MAX_FLATLINE)
    return {"min": low, "max": high, "flatline": flatline}


def _unit(f: _Fields) -> str | None:
    value = f.get("unit", (str, int, float))
    return None if value is None else str(value)
