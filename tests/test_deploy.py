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
    "pollctl-api.service": "pollctl-api.service",
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
    # pollctl-flower checks its login in a shell first.
    (tmp_path / "bin").mkdir()
    shutil.copy(bin_dir / "celery", tmp_path / "bin" / "sh")
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


INSTALL = DEPLOY / "install.sh"


def install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_a_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path):
    prefix = tmp_path / "root"
    result = install("--dry-run", "--prefix", str(prefix))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for step in ("user pollctl", "virtual environment", "settings", "units in", "systemd"):
        assert f"==> {step}" in out, out
    assert "systemctl enable pollctl-worker@1.service" in out
    assert "dry run: nothing changed" in out
    assert not prefix.exists()


def test_an_unknown_option_is_one_line():
    result = install("--prefx", "/tmp/x")
    assert result.returncode == 2
    assert result.stderr.strip() == "install.sh: unknown option --prefx (see --help)"


@pytest.mark.long
def test_install_into_a_prefix_builds_the_tree_and_keeps_the_settings(tmp_path: Path):
    """A real install (a virtual environment with pollctl and Flower), run twice: the
    second run keeps the operator's edited settings file."""
    first = install("--prefix", str(tmp_path))
    assert first.returncode == 0, first.stdout + first.stderr
    venv = tmp_path / "opt" / "pollctl" / ".venv" / "bin"
    env_file = tmp_path / "etc" / "pollctl" / "pollctl.env"
    units = tmp_path / "etc" / "systemd" / "system"
    assert oct(env_file.stat().st_mode & 0o777) == "0o640"
    assert env_file.read_text() == (DEPLOY / "pollctl.env").read_text()
    assert sorted(p.name for p in units.iterdir()) == sorted(
        p.name for p in DEPLOY.iterdir() if p.suffix in (".service", ".timer")
    )
    for command in ("pollctl", "celery"):
        assert (venv / command).is_file()
    config = subprocess.run(
        [str(venv / "pollctl"), "config"],
        env={"POLLING_ENV_FILE": str(env_file), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert config.returncode == 0, config.stderr
    assert f"# settings file: {env_file}" in config.stdout
    assert "POLLING_DATABASE_URL=postgresql://pollctl@127.0.0.1:5432/pollctl" in config.stdout
    flower = subprocess.run(
        [str(venv / "python"), "-c", "import flower"], capture_output=True, timeout=60
    )
    assert flower.returncode == 0, flower.stderr
    # The installed units verify against the installed tree (its real celery and pollctl),
    # beside the system's own units and shell.
    shutil.copytree("/usr/lib/systemd/system", tmp_path / "usr/lib/systemd/system", symlinks=True)
    (tmp_path / "bin").mkdir(exist_ok=True)
    shutil.copy("/bin/sh", tmp_path / "bin" / "sh")
    verified = analyze("verify", f"--root={tmp_path}", *UNITS, "pollctl-validate.timer", cwd=units)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr

    env_file.write_text(env_file.read_text() + "POLLING_MAX_GAP=4\n")  # the operator's edit
    again = install("--prefix", str(tmp_path))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "kept (it exists" in again.stdout
    assert env_file.read_text().endswith("POLLING_MAX_GAP=4\n")


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Each `Key=value` of a unit file, every value of a repeated key, continuations joined."""
    text = path.read_text().replace("\\\n", " ")
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", ";")):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_a_polling_worker_may_open_serial_ports():
    # Serial gateways are polled by the worker of their site (README, Transports):
    # PrivateDevices=yes gave it a /dev without /dev/ttyUSB0, and its user was not in the
    # group that owns the ports, so every serial poll failed with "no such file".
    unit = unit_settings(DEPLOY / "pollctl-worker@.service")
    assert unit.get("PrivateDevices") != ["yes"], unit.get("PrivateDevices")
    assert unit.get("DevicePolicy") == ["closed"]
    allowed = " ".join(unit.get("DeviceAllow", []))
    for major in ("char-ttyS", "char-ttyUSB", "char-ttyACM"):
        assert f"{major} rw" in allowed, allowed
    assert "dialout" in " ".join(unit.get("SupplementaryGroups", []))
