"""The alert rules: pure functions from the fleet's state (gateway rows, recent readings of
points with data rules, and the results of the diagnostics checks that just ran) to
findings `(rule, subject, severity, message)`. No clock, no I/O: `now` is in the state."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, NamedTuple

from ..checks.base import CheckResult
from ..settings import Settings
from ..sites import DEFAULT_SITE

Severity = Literal["warning", "critical"]

#: Rules about a gateway as a whole: while one of them fires, the gateway is down and its
#: other alerts are held (neither opened nor resolved): one "gateway offline", not one
#: alert per point.
GATEWAY_RULES = ("gateway_offline", "gateway_disabled")


class Finding(NamedTuple):
    rule: str
    subject: str
    severity: Severity
    message: str
    #: The gateway it concerns, if any (for the colour rule and the collapse).
    gateway_id: int | None = None


@dataclass(frozen=True)
class GatewayFacts:
    id: int
    name: str
    enabled: bool
    #: Started by an operator (`pollctl start`) and not stopped.
    polling: bool
    #: Disabled by its failure threshold (not by the operator's `enabled: false`).
    disabled_by_failures: bool
    disabled_reason: str | None
    interval_s: float
    last_ok_at: datetime | None
    polling_since: datetime | None


@dataclass(frozen=True)
class PointFacts:
    gateway_id: int
    gateway: str
    point: str
    min: float | None
    max: float | None
    flatline: int | None
    #: The newest readings' values (numbers, or text for strings), newest first.
    recent: tuple[float | str | None, ...]
    unit: str | None = None

    @property
    def subject(self) -> str:
        return f"{self.gateway}/{self.point}"


@dataclass(frozen=True)
class Limits:
    """Thresholds, from the settings (see `Limits.of`)."""

    offline_intervals: float = 3.0
    failure_rate_warning: float = 0.25
    failure_rate_critical: float = 0.5
    backlog_warning: float = 5.0
    backlog_critical: float = 30.0
    queue_depth: int = 10_000
    buffer_share: float = 0.8

    @classmethod
    def of(cls, s: Settings) -> Limits:
        return cls(
            offline_intervals=s.alert_offline_intervals,
            failure_rate_warning=s.failure_rate_warning,
            failure_rate_critical=s.failure_rate_critical,
            backlog_warning=s.backlog_warning,
            backlog_critical=s.backlog_critical,
            queue_depth=s.alert_queue_depth,
            buffer_share=s.alert_buffer_share,
        )


@dataclass(frozen=True)
class FleetState:
    now: datetime
    gateways: Sequence[GatewayFacts] = ()
    points: Sequence[PointFacts] = ()
    #: The diagnostics run's results by component (`queues`, `workers`, ...); a check that
    #: did not run (Redis or the database down) is simply absent.
    checks: Mapping[str, CheckResult] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    findings: list[Finding]
    #: Gateways that are down: their alerts other than the findings are held.
    down: frozenset[int]


def evaluate(state: FleetState, limits: Limits) -> Evaluation:
    """Every rule over `state`; the point rules of a gateway that is down are dropped."""
    gateway_findings = [f for g in state.gateways for f in gateway_rule(g, state.now, limits)]
    down = frozenset(f.gateway_id for f in gateway_findings if f.gateway_id is not None)
    points = [f for p in state.points if p.gateway_id not in down for f in point_rules(p)]
    fleet = [f for rule in CHECK_RULES for f in _checked(rule, state.checks, limits)]
    return Evaluation(gateway_findings + points + fleet, down)


# -- gateways --------------------------------------------------------------------------------


def gateway_rule(g: GatewayFacts, now: datetime, limits: Limits) -> list[Finding]:
    """At most one finding per gateway: offline (started, not disabled by the operator, no
    success for `offline_intervals` intervals) wins over disabled by its failures."""
    if g.polling and (g.enabled or g.disabled_by_failures):
        since = _newest(g.last_ok_at, g.polling_since)
        silent = (now - since).total_seconds() if since else 0.0
        if silent >= limits.offline_intervals * g.interval_s:
            what = f"no successful poll for {_duration(silent)}"
            if g.last_ok_at is None:
                what = f"no successful poll since it started {_duration(silent)} ago"
            if g.disabled_by_failures:
                what += f"; {g.disabled_reason or 'disabled by its failures'}"
            return [Finding("gateway_offline", g.name, "critical", f"{g.name}: {what}", g.id)]
    if g.disabled_by_failures:
        reason = g.disabled_reason or "disabled by its failure threshold"
        return [Finding("gateway_disabled", g.name, "critical", f"{g.name}: {reason}", g.id)]
    return []


def _newest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- points ----------------------------------------------------------------------------------


def point_rules(p: PointFacts) -> list[Finding]:
    """`min`/`max` on the newest numeric value; `flatline` when the newest `flatline`
    readings are all the same value (fewer readings than that: not judged yet)."""
    out: list[Finding] = []
    unit = f" {p.unit}" if p.unit else ""
    newest = p.recent[0] if p.recent else None
    if isinstance(newest, float | int):
        if p.min is not None and newest < p.min:
            text = f"{p.subject} = {newest:g}{unit}, below its min {p.min:g}"
            out.append(Finding("point_min", p.subject, "warning", text, p.gateway_id))
        if p.max is not None and newest > p.max:
            text = f"{p.subject} = {newest:g}{unit}, above its max {p.max:g}"
            out.append(Finding("point_max", p.subject, "warning", text, p.gateway_id))
    if p.flatline and len(p.recent) >= p.flatline and len(set(p.recent[: p.flatline])) == 1:
        shown = f"{newest:g}" if isinstance(newest, float | int) else repr(newest)
        text = f"{p.subject} unchanged ({shown}{unit}) for {p.flatline} polls"
        out.append(Finding("point_flatline", p.subject, "warning", text, p.gateway_id))
    return out


# -- the fleet, from the diagnostics checks -------------------------------------------------

CheckRule = tuple[str, Callable[[CheckResult, Limits], list[Finding]]]


def _checked(rule: CheckRule, checks: Mapping[str, CheckResult], limits: Limits) -> list[Finding]:
    component, judge = rule
    # A per-site check (`workers`, `workers:east`) is judged for each of its sites.
    found = [r for name, r in checks.items() if name.partition(":")[0] == component]
    return [f for result in found for f in judge(result, limits)]


def _grade(value: float, warning: float, critical: float) -> Severity | None:
    if value > critical:
        return "critical"
    return "warning" if value > warning else None


def failure_rate(result: CheckResult, limits: Limits) -> list[Finding]:
    rate = result.details.get("failure_rate")
    if rate is None:
        return []
    severity = _grade(rate, limits.failure_rate_warning, limits.failure_rate_critical)
    if severity is None:
        return []
    d = result.details
    text = (
        f"{d.get('failed', '?')} of {d.get('polled', '?')} polls failed in the last "
        f"{d.get('window_s', 0):g} s ({rate:.0%})"
    )
    return [Finding("failure_rate", "fleet", severity, text)]


def queue_backlog(result: CheckResult, limits: Limits) -> list[Finding]:
    """Per queue: the oldest due message's age (backlog thresholds) or its depth."""
    out = []
    for name, queue in sorted(result.details.items()):
        if name == "unacked" or not isinstance(queue, dict):
            continue
        age = queue.get("oldest_age_s") or 0.0
        waiting = queue.get("waiting") or 0
        severity = _grade(age, limits.backlog_warning, limits.backlog_critical)
        if severity is None and waiting > limits.queue_depth:
            severity = "warning"
        if severity is not None:
            text = f"queue {name}: {waiting} waiting, the oldest due for {age:.1f} s"
            out.append(Finding("queue_backlog", f"queue:{name}", severity, text))
    return out


def overdue_chains(result: CheckResult, _limits: Limits) -> list[Finding]:
    if result.status == "healthy":
        return []
    missing = result.details.get("missing", [])
    overdue = result.details.get("overdue", [])
    if not missing and not overdue:
        return []  # strays only: a tidy-up, not an outage
    severity: Severity = "critical" if result.status == "error" else "warning"
    return [Finding("overdue_chains", "schedules", severity, result.message)]


def buffer_bound(result: CheckResult, limits: Limits) -> list[Finding]:
    d = result.details
    pending, limit, lost = d.get("pending", 0), d.get("limit", 0), d.get("lost", 0)
    if lost:
        return [Finding("buffer", "buffer", "critical", result.message)]
    if limit and pending >= limits.buffer_share * limit:
        text = f"{pending} poll records wait in Redis for the database, of at most {limit}"
        return [Finding("buffer", "buffer", "warning", text)]
    return []


def no_consumer(result: CheckResult, _limits: Limits) -> list[Finding]:
    if "polling" not in result.details or result.details["polling"]:
        return []
    site = result.details.get("site", DEFAULT_SITE)
    subject = "queue:polling" if site == DEFAULT_SITE else f"site:{site}"
    return [Finding("no_consumer", subject, "critical", result.message)]


def overload(result: CheckResult, _limits: Limits) -> list[Finding]:
    """The workers shed a share of the window's slots (the check's threshold): its line
    carries the capacity they showed against what the fleet offers."""
    if result.status != "warning" or "shed" not in result.details:
        return []
    return [Finding("overload", "workers", "warning", result.message)]


def clock_skew(result: CheckResult, _limits: Limits) -> list[Finding]:
    """Each process whose clock is past the bound (the check's `bound_s`)."""
    bound_ms = result.details.get("bound_s", 0) * 1000
    skews: dict[str, int] = result.details.get("skew_ms", {})
    return [
        Finding(
            "clock_skew",
            f"clock:{name}",
            "critical",
            f"{name}: clock {ms / 1000:+.1f} s off Redis's, past the bound {bound_ms / 1000:g} s",
        )
        for name, ms in sorted(skews.items())
        if abs(ms) > bound_ms
    ]


#: Fleet rules and the diagnostics check whose result each reads.
CHECK_RULES: tuple[CheckRule, ...] = (
    ("gateways", failure_rate),
    ("queues", queue_backlog),
    ("schedules", overdue_chains),
    ("buffer", buffer_bound),
    ("workers", no_consumer),
    ("clocks", clock_skew),
    ("overload", overload),
)
