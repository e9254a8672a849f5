"""A skewed wall clock for one child process: Debian's libfaketime (installed by .ci/run).

Only the wall clock is skewed (`FAKETIME_DONT_FAKE_MONOTONIC`), as on a host whose time
sync is off. libfaketime 0.9.10 then breaks `clock_nanosleep` on the monotonic clock, so
Python's `time.sleep` raises EINVAL; `SLEEP_SHIM` makes a Python child sleep on a
condition variable instead (which it leaves alone). The shim touches sleeping only."""

from __future__ import annotations

import glob
from pathlib import Path

SLEEP_SHIM = (
    "import threading, time\n"
    "def _sleep(seconds):\n"
    "    if seconds < 0: raise ValueError('sleep length must be non-negative')\n"
    "    threading.Event().wait(seconds)\n"
    "time.sleep = _sleep\n"
)


def library() -> str:
    found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    if not found:
        raise RuntimeError("libfaketime is missing: apt-get install faketime (.ci/run does)")
    return found[0]


def skewed(offset: str) -> dict[str, str]:
    """Environment for a child whose wall clock is `offset` ("+30s", "-30s") off."""
    return {
        "LD_PRELOAD": library(),
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def stepped(offset: str, path: Path) -> dict[str, str]:
    """Like `skewed`, but the offset is read from `path` (re-read every second), so the
    test can step the clock mid-run with `step`."""
    step(path, offset)
    return {
        "LD_PRELOAD": library(),
        "FAKETIME_TIMESTAMP_FILE": str(path),
        "FAKETIME_CACHE_DURATION": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def step(path: Path, offset: str) -> None:
    path.write_text(f"{offset}\n")
