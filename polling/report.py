"""Text for people: check results as `pollctl validate`, `diagnose` and `audit` print them."""

from __future__ import annotations

import json
from collections.abc import Iterable

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
