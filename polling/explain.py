"""`pollctl explain`: how a gateway is polled and why: its request plan (learnt or full),
the poll budget, the measured mean duration of its polls, and what learning changed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .learnedplan import LearnedPlan, unneeded
from .models import PollLog
from .plan import PollTarget, Request
from .report import table
from .timefmt import iso_z, local
from .transports import describe

FUNCTIONS = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
#: The window the mean duration is measured over.
WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Duration:
    """Mean duration of the ok polls since a time, in milliseconds, and how many."""

    since: datetime
    mean_ms: float | None
    polls: int


@dataclass(frozen=True)
class Explanation:
    target: PollTarget
    #: Mean duration over the window, and since the plan in use was learnt (if it was).
    durations: tuple[Duration, ...]

    @property
    def learned(self) -> LearnedPlan | None:
        plan = self.target.learned
        return plan if plan is not None and plan.basis == self.target.basis else None


def explain(session: Session, target: PollTarget, now: datetime) -> Explanation:
    durations = [mean_duration(session, target.id, now - WINDOW)]
    learned = target.learned
    if learned is not None and learned.spans is not None and learned.learned_at is not None:
        durations.append(mean_duration(session, target.id, learned.learned_at))
    return Explanation(target, tuple(durations))


def mean_duration(session: Session, gateway_id: int, since: datetime) -> Duration:
    """From the poll log: ok polls (scheduled and manual) whose slot began since `since`."""
    mean, count = session.execute(
        select(func.avg(PollLog.duration_ms), func.count()).where(
            PollLog.gateway_id == gateway_id,
            PollLog.outcome == "ok",
            PollLog.slot_at >= since,
        )
    ).one()
    return Duration(since, None if mean is None else float(mean), int(count))


def request_rows(requests: tuple[Request, ...]) -> list[list[object]]:
    rows: list[list[object]] = []
    for r in requests:
        spare = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in unneeded(r)) or "-"
        function = f"{FUNCTIONS[r.register]:02d} {r.register}"
        points = ", ".join(p.name for p in r.points)
        rows.append([function, r.device_id, r.address, r.count, points, spare])
    return rows


def render(x: Explanation) -> str:
    """The explanation as a terminal reads it."""
    t = x.target
    learned = x.learned
    state = "full (nothing refused)"
    if learned is not None and learned.spans is not None:
        state = f"learnt {local(learned.learned_at)}, full plan retried {local(learned.retry_at)}"
    elif learned is not None:
        state = "full (the learnt one was dropped; a refusal teaches it again)"
    where = describe(t.config.transport, t.config.host, t.config.port)
    lines = [f"gateway {t.config.name} ({where}): plan {state}"]
    headers = ["function", "device", "first", "count", "points", "unneeded"]
    lines.append(table(headers, request_rows(t.requests)))
    if t.unavailable:
        lines.append("unavailable: " + ", ".join(p.name for p in t.unavailable))
    lines.append(
        f"poll budget: {t.budget:.1f} s ({len(t.requests)} requests at "
        f"{t.config.timeout:g} s, plus connect)"
    )
    for d in x.durations:
        mean = "-" if d.mean_ms is None else f"{d.mean_ms:.1f} ms"
        lines.append(f"mean duration since {local(d.since)}: {mean} over {d.polls} ok polls")
    if t.learned is not None and t.learned.basis != t.basis:
        lines.append("a plan learnt for an earlier configuration is ignored")
    if t.learned is not None and t.learned.events:
        lines.append("learning:")
        lines += [f"  {local(at)}  {what}" for at, what in t.learned.events]
    return "\n".join(lines)


def as_json(x: Explanation) -> dict:
    """The explanation for scripts (`explain --json`): times in UTC with Z."""
    t = x.target
    learned = x.learned
    plan = "learnt" if learned is not None and learned.spans is not None else "full"
    return {
        "gateway": t.config.name,
        "where": describe(t.config.transport, t.config.host, t.config.port),
        "plan": plan,
        "learned_at": iso_z(learned.learned_at) if plan == "learnt" and learned else None,
        "retry_at": iso_z(learned.retry_at) if plan == "learnt" and learned else None,
        "requests": [
            {
                "function": FUNCTIONS[r.register],
                "register": r.register,
                "device": r.device_id,
                "first": r.address,
                "count": r.count,
                "points": [p.name for p in r.points],
                "unneeded": [list(span) for span in unneeded(r)],
            }
            for r in t.requests
        ],
        "unavailable": [p.name for p in t.unavailable],
        "budget_s": round(t.budget, 3),
        "durations": [
            {"since": iso_z(d.since), "mean_ms": d.mean_ms, "polls": d.polls} for d in x.durations
        ],
        "learning": [
            {"at": iso_z(at), "what": what} for at, what in (t.learned.events if t.learned else [])
        ],
    }
