"""Register words to values and back, for every point type and word/byte order.

Orders name the four bytes of a 32-bit value as they arrive: ABCD is big-endian,
DCBA little-endian, BADC big-endian words with swapped bytes, CDAB swapped words.
The same rule extends to 64-bit values (word order reversed for CDAB and DCBA) and,
for byte swapping, to strings.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from .errors import DecodeError

if TYPE_CHECKING:  # plan imports gateways, which imports this module
    from .gateways import Point
    from .plan import Request

WIDTHS: Final = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
    "bool": 1,
}
STRUCT: Final = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "float32": "f",
    "int64": "q",
    "uint64": "Q",
    "float64": "d",
}
TYPES: Final = (*WIDTHS, "string")
ORDERS: Final = ("ABCD", "DCBA", "BADC", "CDAB")

Value = float | int | bool | str


def width(type_: str, count: int | None = None) -> int:
    """Registers a point of this type occupies."""
    if type_ == "string":
        if not count:
            raise DecodeError("string points need a register count")
        return count
    return WIDTHS[type_]


def _to_bytes(words: Sequence[int], order: str) -> bytes:
    if order in ("CDAB", "DCBA"):
        words = words[::-1]
    data = b"".join(w.to_bytes(2, "big") for w in words)
    if order in ("BADC", "DCBA"):
        data = b"".join(data[i + 1 : i + 2] + data[i : i + 1] for i in range(0, len(data), 2))
    return data


def _to_words(data: bytes, order: str) -> list[int]:
    if order in ("BADC", "DCBA"):
        data = b"".join(data[i + 1 : i + 2] + data[i : i + 1] for i in range(0, len(data), 2))
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words[::-1] if order in ("CDAB", "DCBA") else words


def decode(words: Sequence[int], type_: str, order: str = "ABCD") -> Value:
    """The raw value held in `words` (exactly the point's width of registers)."""
    if type_ == "bool":
        return bool(words[0])
    data = _to_bytes(words, order)
    if type_ == "string":
        return data.split(b"\x00", 1)[0].decode("latin-1").rstrip()
    expected = WIDTHS[type_]
    if len(words) != expected:
        raise DecodeError(f"{type_} needs {expected} registers, got {len(words)}")
    return struct.unpack(">" + STRUCT[type_], data)[0]


def encode(value: Value, type_: str, order: str = "ABCD", count: int | None = None) -> list[int]:
    """Registers that `decode` turns back into `value` (the simulator's side)."""
    if type_ == "bool":
        return [1 if value else 0]
    if type_ == "string":
        size = 2 * width(type_, count)
        data = str(value).encode("latin-1")[:size].ljust(size, b"\x00")
    else:
        data = struct.pack(">" + STRUCT[type_], value)
    return _to_words(data, order)


def scaled(raw: Value, scale: float, offset: float) -> Value:
    """Engineering value: raw * scale + offset, leaving strings, bools and unscaled
    integers as they are so a 64-bit counter keeps every digit."""
    if isinstance(raw, (str, bool)):
        return raw
    if scale == 1 and offset == 0:
        return raw
    # 15 significant digits drop binary noise (0.1 * 3 -> 0.3, not 0.30000000000000004).
    return float(f"{raw * scale + offset:.15g}")


def decode_answers(
    requests: Sequence[Request], answers: Sequence[Sequence[int]]
) -> list[tuple[Point, object]]:
    """Each point of `requests` with its value, from each request's registers (or bits)."""
    values: list[tuple[Point, object]] = []
    for request, words in zip(requests, answers, strict=True):
        bits = request.register in ("coil", "discrete")
        for point in request.points:
            start = point.address - request.address
            if bits:
                values.append((point, bool(words[start])))
                continue
            raw = decode(words[start : start + point.width], point.type, point.order)
            values.append((point, scaled(raw, point.scale, point.offset)))
    return values


#: Raw ranges of the integer types: a value outside one cannot be written.
INT_RANGES: Final = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
FLOAT32_MAX: Final = 3.4028234663852886e38


def unscaled(value: Value, type_: str, scale: float, offset: float) -> Value:
    """The raw value whose `scaled` is `value` (the inverse: (value - offset) / scale,
    rounded to the nearest integer for integer types). ValueError when `value` does not
    fit the type, naming the range."""
    if type_ == "string":
        return str(value)
    if type_ == "bool":
        return _bool(value)
    number = _number(value)
    if scale == 0:
        raise ValueError("the point's scale is 0: no raw value gives this value")
    # An integer value with scale 1 and a whole offset stays an int: a float would round
    # away the low digits of a 64-bit value.
    exact = type_ in INT_RANGES and isinstance(number, int) and scale == 1
    exact = exact and float(offset).is_integer()
    raw: float | int = number - int(offset) if exact else (number - offset) / scale
    if type_ in INT_RANGES:
        low, high = INT_RANGES[type_]
        if raw != raw or raw in (float("inf"), float("-inf")):
            raise ValueError(f"{value} is not a number")
        raw = round(raw)
        if not low <= raw <= high:
            raise ValueError(f"{value} is out of range for {type_} (raw {low}..{high})")
        return raw
    if not math.isfinite(raw):  # a setpoint of NaN or infinity is never meant
        raise ValueError(f"{value} is not a finite number")
    if type_ == "float32" and abs(raw) > FLOAT32_MAX:
        raise ValueError(f"{value} is out of range for float32")
    return float(raw)


def _bool(value: Value) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "on", "off"):
        raise ValueError(f"{value!r} is not a bool (true/false, 1/0, on/off)")
    return text in ("true", "1", "on")


def _check_latin1(text: str) -> None:
    """Strings are stored one latin-1 byte per character, as `decode` reads them."""
    try:
        text.encode("latin-1")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise ValueError(f"{text!r} is not latin-1 ({bad!r} at {exc.start})") from None


def _number(value: Value) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    text = value.strip()
    try:
        return int(text)  # exact: a 64-bit counter keeps every digit
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None


def encode_point(
    value: Value,
    type_: str,
    order: str = "ABCD",
    count: int | None = None,
    scale: float = 1.0,
    offset: float = 0.0,
) -> list[int]:
    """Registers holding the engineering `value` of a point (the inverse of `decode` then
    `scaled`); ValueError when it does not fit the type."""
    raw = unscaled(value, type_, scale, offset)
    if type_ == "string":
        _check_latin1(str(raw))  # then one character is one byte
        if len(str(raw)) > 2 * width(type_, count):
            raise ValueError(f"{value!r} is longer than {2 * width(type_, count)} characters")
    return encode(raw, type_, order, count)
