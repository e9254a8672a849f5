"""The systemd units in deploy/: valid (`systemd-analyze verify` against a scratch root
holding the system's units and stand-ins for the installed commands) and hardened
(`systemd-analyze security --offline`: exposure 2.5 or lower, "OK", for every unit).
`systemd-analyze` comes with Debian's `systemd` package (.ci/run installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
#: A template is scored through one of its instances.
UNITS = {
    "pollctl-worker@1.service": "pollctl-worker@.service",
    "pollctl-scheduler.service": "pollctl-scheduler.service",
    "pollctl-beat.service": "pollctl-beat.service",
    "pollctl-flower.service": "pollctl-flower.service",
    "pollctl-validate.service": "pollctl-validate.service",
}
EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)")


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        raise RuntimeError("systemd-analyze is missing: apt-get install systemd (.ci/run does)")
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A scratch root: the system's own units, ours, and the commands they start."""
    units = tmp_path / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    system = tmp_path / "usr" / "lib" / "systemd" / "system"
    shutil.copytree("/usr/lib/systemd/system", system, symlinks=True)
    for path in DEPLOY.glob("pollctl*.*"):
        if path.suffix in (".service", ".timer"):
            shutil.copy(path, units / path.name)
    bin_dir = tmp_path / "opt" / "pollctl" / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for command in ("celery", "pollctl"):
        (bin_dir / command).write_text("#!/bin/sh\n")
        (bin_dir / command).chmod(0o755)
    return tmp_path


def test_every_unit_verifies(root: Path):
    units = root / "etc" / "systemd" / "system"
    names = [*UNITS, "pollctl-validate.timer"]
    result = analyze("verify", f"--root={root}", *names, cwd=units)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_every_unit_is_hardened(tmp_path: Path):
    scores = {}
    for instance, source in UNITS.items():
        shutil.copy(DEPLOY / source, tmp_path / instance)
        result = analyze("security", "--offline=yes", f"./{instance}", cwd=tmp_path)
        found = EXPOSURE.search(result.stdout)
        assert found, result.stdout + result.stderr
        scores[instance] = (float(found.group(1)), found.group(2))
    print("\nexposure:", scores)
    assert all(score <= 2.5 and grade == "OK" for score, grade in scores.values()), scores
