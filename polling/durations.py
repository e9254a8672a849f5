"""Retention periods as operators write them: `90` (days), `30d`, `12h`, `45m`, `0`."""

from __future__ import annotations

import re
from datetime import timedelta

from .errors import ConfigError

_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_PERIOD = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms]?)")


def parse_period(raw: str, name: str) -> timedelta | None:
    """The period `raw` stands for (a bare number is days); None for 0, which means keep
    forever. `name` (the setting or option) is named in the error for anything else."""
    match = _PERIOD.fullmatch(raw.strip().lower())
    if not match:
        raise ConfigError(f"{name}={raw!r}: expected days (90) or 30d, 12h, 45m; 0 keeps forever")
    period = timedelta(**{_UNITS[match[2] or "d"]: float(match[1])})
    return period or None
