"""Whether the database's unique keys ever had to refuse a poll record: a slot that already
held a different record means a second poll of it, or a poll of a slot a restart wrote as
missed. The keys kept the record consistent, but the guarantee failed upstream."""

from __future__ import annotations

from sqlalchemy import select

from ..models import GatewayRow
from .base import CheckResult, Context, healthy


def check_records(ctx: Context) -> CheckResult:
    with ctx.rt.sessions() as session:
        rows = session.execute(
            select(GatewayRow.name, GatewayRow.slot_conflicts)
            .where(GatewayRow.slot_conflicts > 0)
            .order_by(GatewayRow.name)
        )
        counts: dict[str, int] = {name: n for name, n in rows}
    total = sum(counts.values())
    if not total:
        return healthy("records", "no poll record refused for a slot held otherwise")
    listed = ", ".join(f"{name} {n}" for name, n in list(counts.items())[:5])
    return CheckResult(
        "records",
        "warning",
        f"{total} poll records refused: their slot already held another record ({listed})",
        {"slot_conflicts": counts},
        [
            "the database kept one record per slot, but a slot was polled twice or written "
            "as missed while polled: report it with `pollctl diagnose --json` and the logs"
        ],
    )
