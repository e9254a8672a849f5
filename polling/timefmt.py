"""Times as people and programs read them: the operator's local zone with its offset on a
terminal, ISO 8601 in UTC with `Z` in JSON and CSV."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_z(value: datetime | None) -> str | None:
    """`2026-12-04T12:00:00.250Z` (None stays None)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def local(value: datetime | None) -> str:
    """`2026-12-04 13:00:00.250+01:00` in this host's zone (TZ), `-` for none."""
    if value is None:
        return "-"
    return value.astimezone().isoformat(sep=" ", timespec="milliseconds")
