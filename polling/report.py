"""Text for people: plain tables, and check results as `pollctl validate`, `diagnose` and
`audit` print them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from .checks.base import CheckResult


def _detail_lines(result: CheckResult) -> list[str]:
    lines = []
    for name, value in result.details.items():
        if value in (None, [], {}, ""):
            continue
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        elif isinstance(value, dict):
            value = json.dumps(value, default=str)
        lines.append(f"         {name}: {value}")
    return lines


def render(
    results: Iterable[CheckResult],
    repairs: dict[str, list[str]],
    *,
    verbose: bool,
    headline: str,
) -> str:
    """One line per check; with `verbose`, every check's details and recommendations,
    otherwise only those of checks that found something."""
    lines = [headline]
    for r in results:
        lines.append(f"{r.status.upper():8} {r.component}: {r.message}")
        if verbose or r.status != "healthy":
            lines += _detail_lines(r)
            lines += [f"         -> {hint}" for hint in r.recommendations]
        lines += [f"         repaired: {action}" for action in repairs.get(r.component, [])]
    return "\n".join(lines)


def as_json(results: Iterable[CheckResult], repairs: dict[str, list[str]], health: str) -> str:
    return json.dumps(
        {"health": health, "checks": [r.as_json() for r in results], "repairs": repairs},
        indent=2,
        default=str,
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
