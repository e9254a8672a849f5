"""The `pollctl` command through click's runner, against the real services."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli import main, parse_since
from polling.models import GatewayRow, PointRow
from tests.fleet import fleet


@pytest.fixture
def pollctl(env, runtime):
    runner = CliRunner()

    def run(*args: str, code: int | None = 0, extra_env: dict | None = None):
        result = runner.invoke(main, list(args), env={**env, **(extra_env or {})})
        if code is not None:
            assert result.exit_code == code, result.output + str(result.exception)
        return result

    return run


def counts(runtime):
    with runtime.sessions() as session:
        return (
            session.scalar(select(func.count()).select_from(GatewayRow)),
            session.scalar(select(func.count()).select_from(PointRow)),
        )


def test_import_is_an_upsert_by_name(pollctl, runtime, gateways_file, free_ports):
    document = fleet(free_ports(2), [1, 2], [{"name": "a", "address": 0}])
    out = pollctl("gateway", "import", str(gateways_file(document))).output
    assert "imported 2 gateways" in out and "(2 new, 0 updated)" in out
    document["gateways"][0]["points"].append({"name": "b", "address": 1})
    out = pollctl("gateway", "import", str(gateways_file(document))).output
    assert "(0 new, 2 updated)" in out
    assert counts(runtime) == (2, 3)


def test_reimporting_a_smaller_file_keeps_or_prunes_what_it_no_longer_has(
    pollctl, runtime, gateways_file, free_ports
):
    document = fleet(free_ports(3), [1, 1, 1], [{"name": "a", "address": 0}])
    pollctl("gateway", "import", str(gateways_file(document)))
    smaller = {"gateways": document["gateways"][:1]}
    path = str(gateways_file(smaller, "smaller.yaml"))
    kept = pollctl("gateway", "import", path)
    assert "note: 2 gateways (gw1, gw2) stored but not in the file: kept" in kept.stdout
    planned = pollctl("gateway", "import", path, "--prune", "--dry-run")
    assert planned.stdout.splitlines()[:2] == [
        f"would import 1 gateways from {path} (0 new, 1 updated)",
        "would delete 2 gateways (gw1, gw2) not in the file",
    ]
    assert counts(runtime)[0] == 3
    refused = pollctl("gateway", "import", path, "--prune", code=1)  # not a terminal
    assert "not on a terminal, so add --yes" in refused.stderr and counts(runtime)[0] == 3
    pruned = pollctl("gateway", "import", path, "--prune", "--yes")
    assert "deleted 2 gateways (gw1, gw2) not in the file" in pruned.stdout
    assert counts(runtime)[0] == 1


def test_an_empty_file_is_a_warning_and_never_prunes_everything(
    pollctl, runtime, gateways_file, free_ports
):
    pollctl("gateway", "import", str(gateways_file(fleet(free_ports(1), [1]))))
    empty = str(gateways_file({"gateways": []}, "empty.yaml"))
    warned = pollctl("gateway", "import", empty)
    assert warned.stderr == f"warning: {empty} has no gateways: nothing imported\n"
    refused = pollctl("gateway", "import", empty, "--prune", "--yes", code=1)
    assert refused.stderr == f"error: {empty} has no gateways: --prune would delete all 1\n"
    assert counts(runtime)[0] == 1


def test_a_bad_file_is_refused_whole_and_nothing_changes(
    pollctl, runtime, gateways_file, free_ports
):
    good = fleet(free_ports(2), [1, 2], [{"name": "a", "address": 0}])
    pollctl("gateway", "import", str(gateways_file(good)))
    bad = fleet(free_ports(2), [1, 2], [{"name": "a", "address": 0}])
    bad["gateways"][0]["points"].append({"name": "b", "address": 1, "type": "float32"})
    bad["gateways"][1]["points"][0]["type"] = "string"
    path = gateways_file(bad, "bad.yaml")
    result = pollctl("gateway", "import", str(path), code=1)
    assert result.output.splitlines() == [
        f"error: {path}: gateway 'gw1': point 'a': field 'count': is required for string points "
        "(registers to read)"
    ]
    assert counts(runtime) == (2, 2)
    with runtime.sessions() as session:
        ports = set(session.scalars(select(GatewayRow.port)))
    assert ports == {g["port"] for g in good["gateways"]}


def test_unreachable_services_give_one_line_naming_the_url(pollctl):
    result = pollctl("status", code=1, extra_env={"POLLING_REDIS_URL": "redis://127.0.0.1:1/0"})
    [line] = result.output.splitlines()
    assert line.startswith("error: redis redis://127.0.0.1:1/0 is unreachable")
    result = pollctl(
        "status",
        code=1,
        extra_env={"POLLING_DATABASE_URL": "postgresql://nobody:pw@127.0.0.1:1/none"},
    )
    [line] = result.output.splitlines()
    assert line.startswith("error: database postgresql+psycopg://nobody:***@127.0.0.1:1/none")


def test_start_status_poll_now_readings_stop(pollctl, gateways_file, simulate, free_ports):
    points = [
        {"name": "a", "address": 0, "unit": "kW"},
        {"name": "on", "register": "coil", "address": 1},
    ]
    document = fleet(free_ports(2), [1, 2], points)
    simulate(document)
    pollctl("gateway", "import", str(gateways_file(document)))
    started = pollctl("start", "--gateway", "gw0")
    assert started.stdout.strip() == "started gw0"
    # No worker runs here: start says the chains wait, and status that nothing polls.
    assert "warning: no worker consumes the polling queue" in started.stderr
    listed = pollctl("status", "--json")
    statuses = {s["name"]: s for s in json.loads(listed.stdout)}
    assert statuses["gw0"]["polling"] == "waiting" and statuses["gw1"]["polling"] == "no"
    assert statuses["gw0"]["next_due"].endswith("Z")
    shown = pollctl("status")
    assert "nothing is being polled" in shown.stderr
    (gw0,) = [line for line in shown.stdout.splitlines() if line.startswith("gw0")]
    assert re.search(
        r"waiting +- +- +never +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", gw0
    )

    out = pollctl("poll-now", "--gateway", "gw1").stdout
    assert out.startswith("gw1: ok") and re.search(r"  a = \d+ kW", out)
    assert re.search(r"  on = (true|false)$", out, re.M)
    rows = json.loads(pollctl("readings", "--gateway", "gw1", "--format", "json").stdout)
    assert {(r["point"], r["unit"], r["kind"]) for r in rows} == {
        ("a", "kW", "manual"),
        ("on", None, "manual"),
    }
    assert {type(r["value"]) for r in rows} == {int, bool}
    assert all(r["slot_at"].endswith("Z") for r in rows)
    headers = ["gateway", "point", "slot_at", "read_at", "value", "unit", "kind"]
    assert list(rows[0]) == headers
    text = pollctl("readings", "--gateway", "gw1", "--format", "csv", "--since", "10m").stdout
    header, *data = list(csv.reader(io.StringIO(text)))
    assert header == headers and len(data) == 2
    assert {row[4] for row in data if row[1] == "on"} <= {"true", "false"}
    table = pollctl("readings", "--gateway", "gw1", "--point", "a", "--limit", "5").stdout
    header_line, _, row = table.splitlines()
    assert header_line.split() == header and row.split()[0:2] == ["gw1", "a"]
    assert row.split()[-2:] == ["kW", "manual"]
    unknown = pollctl("readings", "--gateway", "gw1", "--point", "nosuch", code=1)
    assert unknown.stderr == "error: gateway gw1 has no point 'nosuch' (its points: a, on)\n"
    assert "gw1" in pollctl("status", "--detailed").stdout

    # Stop counts what was polling: gw0 only; a second stop finds nothing.
    assert pollctl("stop").stdout.strip() == "stopped 1 gateways: gw0"
    assert pollctl("stop").stdout.strip() == "nothing was polling"
    statuses = {s["name"]: s for s in json.loads(pollctl("status", "--json").stdout)}
    assert statuses["gw0"]["polling"] == "no"


def test_unknown_gateway_names_are_errors(pollctl):
    for args in (
        ["start", "--gateway", "nope"],
        ["poll-now", "--gateway", "nope"],
        ["readings", "--gateway", "nope"],
    ):
        result = pollctl(*args, code=1)
        assert result.output.strip() == "error: unknown gateway: nope"


def checks(result) -> dict[str, dict]:
    return {c["component"]: c for c in json.loads(result.output)["checks"]}


def test_validate_reports_schedules_and_exits_critical_without_workers(
    pollctl, gateways_file, free_ports
):
    pollctl("gateway", "import", str(gateways_file(fleet(free_ports(1), [1]))))
    pollctl("start")
    result = pollctl("validate", "--json", code=2)  # no worker, no beat in this test
    found = checks(result)
    assert json.loads(result.output)["health"] == "critical"
    assert found["schedules"]["status"] == "healthy"  # a fresh chain is not overdue yet
    assert found["workers"]["status"] == "error"
    assert any("pollctl-worker@" in r for r in found["workers"]["recommendations"])
    result = pollctl(
        "validate", "--json", code=2, extra_env={"POLLING_KEY_PREFIX": "elsewhere"}
    )  # as seen by a deployment whose Redis lost every chain
    schedules = checks(result)["schedules"]
    assert schedules["details"]["missing"] == ["gw0"] and schedules["fixable"]
    assert any("pollctl-beat" in r for r in schedules["recommendations"])


def test_config_masks_secrets(pollctl):
    out = pollctl("config", extra_env={"POLLING_DATABASE_URL": "postgresql://u:secret@h/db"}).output
    assert "POLLING_DATABASE_URL=postgresql://u:***@h/db" in out and "secret" not in out


def test_since_parsing():
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_since("10m", now) == datetime(2026, 1, 1, 11, 50, tzinfo=UTC)
    assert parse_since("2h", now) == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert parse_since("2026-01-01T10:00:00", now) == datetime(2026, 1, 1, 10, tzinfo=UTC)


def test_simulate_serves_a_file_until_its_duration(pollctl, env, gateways_file, free_ports):
    import socket
    import subprocess
    import sys
    import time

    from tests.processes import ROOT

    document = fleet(free_ports(1), [1], [{"name": "a", "address": 0, "type": "int32"}])
    path = gateways_file(document)
    pollctl("gateway", "import", str(path))
    port = document["gateways"][0]["port"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "simulate", "--config", str(path), "--duration", "30"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # until the simulator accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.1)
        assert pollctl("poll-now", "--gateway", "gw0").output.startswith("gw0: ok")
    finally:
        proc.terminate()
        proc.wait(10)


def run_on_a_terminal(env: dict, args: list[str], answer: str | None) -> tuple[int, str]:
    """`pollctl ARGS` with a pseudo-terminal for stdin, stdout and stderr, typing `answer`
    once it asks (None: it asks nothing); returns the exit code and what it showed."""
    import os
    import pty
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    controller, terminal = pty.openpty()
    command = [sys.executable, "-c", "from cli import main; main()", *args]
    proc = subprocess.Popen(
        command,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, **env, "PYTHONPATH": str(root)},
        cwd=root,
    )
    os.close(terminal)
    shown = b""
    while answer is not None and b"[y/N]" not in shown:
        chunk = os.read(controller, 1024)
        assert chunk, shown
        shown += chunk
    if answer is not None:
        os.write(controller, answer.encode() + b"\n")
    while True:
        try:
            chunk = os.read(controller, 1024)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    return proc.wait(30), shown.decode(errors="replace")


def test_gateway_delete_asks_on_a_terminal_and_wants_yes_elsewhere(
    pollctl, env, runtime, gateways_file, free_ports, simulate
):
    document = fleet(
        free_ports(2), [1, 1], [{"name": "a", "address": 0}, {"name": "b", "address": 1}]
    )
    simulate(document)
    pollctl("gateway", "import", str(gateways_file(document)))
    pollctl("poll-now", "--gateway", "gw0")  # two readings
    refused = pollctl("gateway", "delete", "gw0", code=1)
    assert refused.stderr == (
        "error: delete gateway gw0 with its 2 readings and its poll log: not on a terminal, "
        "so add --yes\n"
    )
    code, shown = run_on_a_terminal(env, ["gateway", "delete", "gw0"], "n")
    assert code == 1 and "delete gateway gw0 with its 2 readings and its poll log? [y/N]" in shown
    assert counts(runtime)[0] == 2
    code, shown = run_on_a_terminal(env, ["gateway", "delete", "gw0"], "y")
    assert code == 0 and "deleted gw0 and its 2 readings" in shown
    assert pollctl("gateway", "delete", "gw1", "--yes").stdout == "deleted gw1 and its 0 readings\n"
    assert counts(runtime)[0] == 0


def test_poll_now_on_a_dead_device_is_our_one_line_without_library_noise(
    pollctl, gateways_file, free_ports
):
    pollctl("gateway", "import", str(gateways_file(fleet(free_ports(1), [1]))))  # no device
    result = pollctl("poll-now", "--gateway", "gw0", code=1)
    assert result.stdout.startswith("gw0: failed: ")
    assert result.stderr == ""  # pymodbus's "Failed to connect ..." warnings stay out


def test_poll_now_of_another_sites_gateway_goes_through_a_worker_of_that_site(
    pollctl, gateways_file, simulate, free_ports
):
    document = fleet(free_ports(1), [1], [{"name": "a", "address": 0}])
    document["gateways"][0]["site"] = "east"
    simulate(document)
    pollctl("gateway", "import", str(gateways_file(document)))
    # This host serves site default only: the command goes to site east's queue, which no
    # worker consumes here, and is given up (never run later).
    refused = pollctl("poll-now", "--gateway", "gw0", code=1)
    assert refused.stderr.startswith("error: no worker of site east took the command within")
    assert "nothing was sent to gw0" in refused.stderr
    # A host whose POLLING_SITES names east reaches its network: it polls by itself.
    here = pollctl("poll-now", "--gateway", "gw0", extra_env={"POLLING_SITES": "east"})
    assert here.stdout.startswith("gw0: ok\n  a = ")


def test_status_filters_by_gateway_and_state(pollctl, gateways_file, free_ports):
    pollctl("gateway", "import", str(gateways_file(fleet(free_ports(3), [1, 1, 1]))))
    pollctl("start", "--gateway", "gw1")
    named = json.loads(pollctl("status", "--json", "--gateway", "gw2", "--gateway", "gw0").stdout)
    assert [s["name"] for s in named] == ["gw0", "gw2"]
    waiting = json.loads(pollctl("status", "--json", "--state", "waiting").stdout)
    assert [s["name"] for s in waiting] == ["gw1"]
    stopped = pollctl("status", "--state", "stopped").stdout
    assert [line.split()[0] for line in stopped.splitlines()[2:]] == ["gw0", "gw2"]
    unknown = pollctl("status", "--gateway", "nosuch", code=1)
    assert unknown.stderr == "error: unknown gateway: nosuch\n"


def test_shell_completion_offers_gateway_names_from_the_database(
    pollctl, env, gateways_file, free_ports
):
    import os
    import subprocess
    import sys

    pollctl("gateway", "import", str(gateways_file(fleet(free_ports(3), [1, 1, 1]))))
    completing = {
        **os.environ,
        **env,
        "_POLLCTL_COMPLETE": "bash_complete",
        "COMP_WORDS": "pollctl status --gateway gw",
        "COMP_CWORD": "3",
    }
    command = [sys.executable, "-c", "from cli import main; main(prog_name='pollctl')"]
    result = subprocess.run(command, env=completing, capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == ["plain,gw0", "plain,gw1", "plain,gw2"], result.stderr


def test_a_large_import_shows_progress_on_a_terminal(env, runtime, gateways_file, free_ports):
    document = fleet(list(range(1000, 1300)), [10] * 300, [{"name": "a", "address": 0}])
    path = gateways_file(document)
    code, shown = run_on_a_terminal(env, ["gateway", "import", str(path)], None)
    assert code == 0, shown
    assert f"checking {path.name}" in shown and f"importing {path.name}" in shown
    assert "100%" in shown and "imported 300 gateways" in shown
    assert counts(runtime) == (300, 300)


def test_api_on_a_port_in_use_is_one_line(pollctl, free_ports):
    # uvicorn logged its bind error among JSON lines, after "pollctl api on http://...",
    # and exited 3.
    import socket

    port = free_ports(1)[0]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = pollctl("api", "--port", str(port), code=1)
    [line] = result.output.splitlines()
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}: "), line
    assert line.endswith("(POLLING_API_HOST, POLLING_API_PORT or --host, --port)"), line


def test_db_upgrade_to_a_revision_that_does_not_exist_is_one_line(pollctl):
    # Alembic's CommandError came out as a traceback.
    result = pollctl("db", "upgrade", "--revision", "9999", code=1)
    [line] = result.output.splitlines()
    assert line.startswith("error: revision 9999: Can't locate revision identified by '9999'")
