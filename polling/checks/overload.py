"""The overload check: polls shed over the health window (polling/shedding.py), and the
capacity the workers showed against what the fleet offers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import configcache
from ..models import PollLog
from ..queries import window_stats
from ..schedule import ms_to_dt
from ..shedding import SHED_PREFIX
from ..timefmt import span
from .base import CheckResult, Context, healthy

RECOMMENDATIONS = [
    "add polling workers (`systemctl enable --now pollctl-worker@N`, one per core) or "
    "worker hosts, or lengthen intervals: the workers make fewer polls than the fleet offers",
    "shed polls are skipped slots: `pollctl status --detailed` counts them per gateway",
]


@dataclass(frozen=True)
class Load:
    """The scheduled slots of a window: recorded, shed, polled (ok or failed), over how
    many seconds, and the rate the enabled gateways offer (polls/s)."""

    window_s: float
    slots: int
    shed: int
    made: int
    offered: float

    @property
    def made_rate(self) -> float:
        return self.made / self.window_s if self.window_s > 0 else 0.0


#: Share of the window's slots shed from which the workers count as overloaded: a pause
#: (a collection, a broker reconnect) sheds a few, which the message still tells.
OVERLOAD_SHARE = 0.01


def judge(load: Load) -> tuple[bool, str]:
    """Whether the window shows overload (at least `OVERLOAD_SHARE` of its slots shed),
    and the line that says so."""
    made = f"the workers made {_rate(load.made_rate)} polls/s of {_rate(load.offered)} offered"
    window = span(load.window_s)
    if not load.shed:
        return False, f"no polls shed in the last {window}; {made}"
    share = load.shed / load.slots if load.slots else 1.0
    shed = f"{load.shed:,} of {load.slots:,} polls shed in the last {window} ({share:.1%})"
    if share < OVERLOAD_SHARE:
        return False, f"{shed}, below {OVERLOAD_SHARE:.0%}: not overloaded; {made}"
    return True, f"overload: {shed}; {made}"


def _rate(per_s: float) -> str:
    return f"{per_s:,.1f}" if per_s < 10 else f"{per_s:,.0f}"


def check_overload(ctx: Context) -> CheckResult:
    """Warn when polls were shed in the health window, with the measured capacity."""
    rt = ctx.rt
    now = ms_to_dt(rt.clock())
    since = now - timedelta(seconds=rt.settings.health_window)
    offered = sum(1000 / g.grid.interval_ms for g in configcache.fleet(rt) if g.active)
    with rt.sessions() as session:
        stats = window_stats(session, since)
        shed, first = _shed_since(session, since)
    slots = sum(sum(st.outcomes.values()) for st in stats.values())
    made = sum(st.outcomes.get("ok", 0) + st.outcomes.get("failed", 0) for st in stats.values())
    # A fleet that started within the window has polled for less than all of it.
    start = max(since, first) if first is not None else since
    load = Load((now - start).total_seconds(), slots, shed, made, offered)
    overloaded, message = judge(load)
    details = {
        "window_s": round(load.window_s, 1),
        "slots": slots,
        "shed": shed,
        "made": made,
        "made_per_s": round(load.made_rate, 1),
        "offered_per_s": round(offered, 1),
    }
    if not overloaded:
        return healthy("overload", message, **details)
    return CheckResult("overload", "warning", message, details, RECOMMENDATIONS)


def _shed_since(session: Session, since: datetime) -> tuple[int, datetime | None]:
    """Slots shed since `since`, and the earliest scheduled slot recorded since then."""
    shed = session.scalar(
        select(func.count()).where(
            PollLog.kind == "scheduled",
            PollLog.slot_at >= since,
            PollLog.outcome == "skipped",
            PollLog.error.startswith(SHED_PREFIX, autoescape=True),
        )
    )
    first = session.scalar(
        select(func.min(PollLog.slot_at)).where(
            PollLog.kind == "scheduled", PollLog.slot_at >= since
        )
    )
    return int(shed or 0), first
