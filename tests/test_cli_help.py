"""The CLI describes itself: help for every option, an example per command, summaries
never cut short, the README's table and `make help` in step with what exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli import main

ROOT = Path(__file__).resolve().parent.parent


def commands(group: click.Command = main, path: tuple[str, ...] = ()):
    """Every leaf command with its path (`gateway import`), and every group that runs on
    its own (`alerts` lists)."""
    if isinstance(group, click.Group) and group.invoke_without_command and path:
        yield path, group
    if isinstance(group, click.Group | click.CommandCollection):
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None
            yield from commands(command, (*path, name))
    else:
        yield path, group


LEAVES = sorted(commands(), key=lambda item: item[0])


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_command_has_help_for_each_option_and_an_example(path, command):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    missing = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not p.help]
    assert not missing, f"options without help: {missing}"
    (example,) = [line for line in result.output.splitlines() if "Example: " in line]
    assert f"pollctl {' '.join(path)}" in example, example


def test_no_summary_is_cut_short():
    for args in ([], ["gateway"], ["db"], ["buffer"], ["alerts"]):
        out = CliRunner().invoke(main, [*args, "--help"]).output
        assert "..." not in out.split("Commands:")[1], out


def test_the_readme_table_lists_every_command_with_its_options():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The CLI", 1)[1].split("\n\n", 2)[1]
    rows = {
        re.match(r"\| `pollctl ([a-z -]+?)(?: [A-Z\[-].*)?`", line)[1]: line
        for line in table.splitlines()[2:]
    }
    assert set(rows) == {" ".join(path) for path, _ in LEAVES}
    for path, command in LEAVES:
        row = rows[" ".join(path)]
        for option in command.params:
            if isinstance(option, click.Option) and option.opts[0] != "--help":
                assert option.opts[0] in row, f"{' '.join(path)}: {option.opts[0]} not in README"


def test_make_help_names_every_target():
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY: (.+)$", makefile, re.M)[1].split()
    shown = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True)
    listed = set(re.findall(r"^make ([a-z0-9-]+)", shown.stdout, re.M))
    assert set(phony) - {"help"} <= listed, set(phony) - listed
