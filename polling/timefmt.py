"""Times as people and programs read them: the operator's local zone with its offset on a
terminal, ISO 8601 in UTC with `Z` in JSON and CSV."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_z(value: datetime | None) -> str | None:
    """`2026-12-04T12:00:00.250Z` (None stays None)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def span(seconds: float) -> str:
    """`45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`: a duration as an operator says it."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(s // 3600, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def local(value: datetime | None) -> str:
    """`2026-12-04 13:00:00.250+01:00` in this host's zone (TZ), `-` for none."""
    if value is None:
        return "-"
    return value.astimezone().isoformat(sep=" ", timespec="milliseconds")
