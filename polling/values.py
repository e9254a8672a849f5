"""One rendering of a point's value wherever it is shown (readings in every format,
poll-now, the API): the type the point's map gives it, not how the database stores it."""

from __future__ import annotations

from typing import Protocol

INTEGER_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})

Shown = bool | int | float | str | None


class Typed(Protocol):
    """What the rendering needs of a point (a `Point`, or a stored `PointRow`)."""

    @property
    def type(self) -> str: ...
    @property
    def scale(self) -> float: ...
    @property
    def offset(self) -> float: ...


def shown(point: Typed | None, value: object) -> Shown:
    """`value` (decoded, or as stored: a float, or text for strings and wide integers) as
    its point's type: a bool for bits, an int for unscaled integers, else float or str."""
    if value is None:
        return None
    if point is None:  # a point no longer in the gateway's map: as stored
        return value if isinstance(value, (bool, int, float, str)) else str(value)
    if point.type == "bool":
        return bool(value)
    if point.type == "string":
        return str(value)
    if point.type in INTEGER_TYPES and point.scale == 1 and point.offset == 0:
        return int(value)  # type: ignore[call-overload]
    return float(value)  # type: ignore[arg-type]


def cell(value: Shown) -> str:
    """For a table or CSV: true/false for bits (as JSON spells them), empty for none."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
