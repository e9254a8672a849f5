"""The status of every gateway, and a plain-text table to show it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import configcache, queries
from .runtime import Runtime
from .service import is_overdue


def collect_status(rt: Runtime) -> list[queries.GatewayStatus]:
    chains = rt.chains.all()
    now = rt.clock()
    overdue = {
        g.id
        for g in configcache.fleet(rt)
        if g.id in chains and is_overdue(rt, g, chains[g.id], now)
    }
    with rt.sessions() as session:
        return queries.gateway_statuses(session, chains, overdue)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
