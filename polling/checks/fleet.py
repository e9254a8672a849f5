"""Checks of the fleet's state: chains, locks and claims, failures, configuration limits,
and the buffer of records waiting for the database; with the safe repair for each."""

from __future__ import annotations

from datetime import timedelta

from .. import configcache, service
from ..liveness import Overdue
from ..plan import PollTarget
from ..queries import window_stats
from ..redisio import as_text
from ..runtime import Runtime
from ..saving import flush
from ..schedule import ms_to_dt
from .base import CheckResult, Context, Status, graded, healthy

START_WORKERS = (
    "make sure a polling worker (`systemctl start pollctl-worker@1`) and beat "
    "(`systemctl start pollctl-beat`) are running: beat's reconcile restarts chains"
)


def _gateways(ctx: Context) -> dict[int, PollTarget]:
    return {g.id: g for g in configcache.fleet(ctx.rt)}


def check_schedules(ctx: Context) -> CheckResult:
    """Every active gateway has exactly one live chain whose next slot is not overdue,
    and no inactive or deleted gateway has one."""
    rt = ctx.rt
    gateways = _gateways(ctx)
    chains = rt.chains.all()
    now = rt.clock()
    is_overdue = Overdue(gateways.values(), rt.settings.overdue_grace)
    missing, overdue, stray = [], [], []
    for gateway in gateways.values():
        chain = chains.get(gateway.id)
        if gateway.active and chain is None:
            missing.append(gateway.config.name)
        elif gateway.active and chain and is_overdue(gateway, chain, now):
            overdue.append(gateway.config.name)
    for gateway_id in chains:
        owner = gateways.get(gateway_id)
        if owner is None or not owner.active:
            stray.append(owner.config.name if owner else f"#{gateway_id}")
    details = {"missing": missing, "overdue": overdue, "stray": stray}
    active = sum(g.active for g in gateways.values())
    broken = len(missing) + len(overdue)
    if broken:
        share = broken / max(active, 1)
        status: Status = "error" if share >= rt.settings.overdue_critical else "warning"
        return CheckResult(
            "schedules",
            status,
            f"{len(missing)} active gateways without a chain, {len(overdue)} overdue (of {active})",
            details,
            [START_WORKERS, "or repair now: pollctl validate --fix"],
            fixable=True,
        )
    if stray:
        return CheckResult(
            "schedules",
            "warning",
            f"{len(stray)} chains for inactive or deleted gateways",
            details,
            ["pollctl validate --fix retires them"],
            fixable=True,
        )
    stopped = sum(g.enabled and not g.polling for g in gateways.values())
    note = f" ({stopped} enabled but stopped by `pollctl stop`)" if stopped else ""
    return healthy("schedules", f"{active} active gateways, one live chain each{note}", **details)


def fix_schedules(ctx: Context, _result: CheckResult) -> list[str]:
    if ctx.enqueue is None:
        return []
    return service.reconcile(ctx.rt, ctx.enqueue).repairs()


def _orphans(ctx: Context) -> tuple[list[str], list[str]]:
    """Endpoint locks and slot claims that no live gateway owns, or that never expire."""
    rt = ctx.rt
    gateways = _gateways(ctx)
    endpoints = {f"{g.config.host}:{g.config.port}" for g in gateways.values()}
    locks = [
        key
        for key, ttl in _ttls(rt, _scan(rt, rt.keys.locks_pattern))
        if rt.keys.lock_endpoint(key) not in endpoints or ttl == -1
    ]
    return locks, _orphaned_claims(rt, gateways)


def _orphaned_claims(rt: Runtime, gateways: dict[int, PollTarget]) -> list[str]:
    """Claims of unknown gateways, and claims still there long after their own TTL would
    have run out (only those are asked for their TTL: a busy fleet holds a claim per
    gateway per slot for a minute, tens of thousands of keys)."""
    now = rt.clock()
    unknown, overstaying = [], []
    expired_before: dict[int, int] = {}  # per gateway: slots older than this have expired
    for key in _scan(rt, rt.keys.claims_pattern):
        gateway_id, slot_ms = rt.keys.claim_slot(key)
        gateway = gateways.get(gateway_id)
        if gateway is None:
            unknown.append(key)
            continue
        if gateway_id not in expired_before:
            expired_before[gateway_id] = now - CLAIM_SET_LATE_MS - gateway.claim_ttl_ms
        if slot_ms < expired_before[gateway_id]:
            overstaying.append(key)
    return unknown + [key for key, ttl in _ttls(rt, overstaying) if ttl == -1]


#: A claim is set when its step begins, normally at its slot; a redelivered step may
#: begin later. Claims older than this plus their TTL are asked whether they expire.
CLAIM_SET_LATE_MS = 60_000


def _scan(rt: Runtime, pattern: str) -> list[str]:
    return [as_text(raw) for raw in rt.redis.scan_iter(match=pattern, count=1000)]


def _ttls(rt: Runtime, keys: list[str], chunk: int = 1000) -> list[tuple[str, int]]:
    """`keys` with their PTTL, a pipelined round trip per thousand."""
    out: list[tuple[str, int]] = []
    for first in range(0, len(keys), chunk):
        part = keys[first : first + chunk]
        pipe = rt.redis.pipeline(transaction=False)
        for key in part:
            pipe.pttl(key)
        out += zip(part, pipe.execute(), strict=True)
    return out


def check_locks(ctx: Context) -> CheckResult:
    locks, claims = _orphaned = _orphans(ctx)
    if not locks and not claims:
        return healthy("locks", "no orphaned endpoint locks or slot claims")
    return CheckResult(
        "locks",
        "warning",
        f"{len(locks)} orphaned endpoint locks, {len(claims)} orphaned slot claims "
        "(for unknown endpoints or gateways, or without an expiry)",
        {"locks": locks[:50], "claims": claims[:50]},
        ["pollctl validate --fix deletes them"],
        fixable=True,
    )


def fix_locks(ctx: Context, _result: CheckResult) -> list[str]:
    locks, claims = _orphans(ctx)
    if locks or claims:
        ctx.rt.redis.delete(*locks, *claims)
    return [f"deleted {key}" for key in locks + claims]


def check_failures(ctx: Context) -> CheckResult:
    """Failure rate over the health window, gateways failing now, and auto-disabled ones."""
    rt = ctx.rt
    s = rt.settings
    gateways = _gateways(ctx)
    since = ms_to_dt(rt.clock()) - timedelta(seconds=s.health_window)
    with rt.sessions() as session:
        stats = window_stats(session, since)
    polled = sum(st.polled for st in stats.values())
    failed = sum(st.outcomes.get("failed", 0) for st in stats.values())
    missed = sum(st.outcomes.get("missed", 0) for st in stats.values())
    rate = failed / polled if polled else 0.0
    disabled = {g.config.name: g.disabled_reason for g in gateways.values() if g.disabled_reason}
    failing = sorted(
        g.config.name
        for g in gateways.values()
        if g.active and stats.get(g.id) and stats[g.id].outcomes.get("failed")
    )
    details = {
        "window_s": s.health_window,
        "polled": polled,
        "failed": failed,
        "missed": missed,
        "failure_rate": round(rate, 4),
        "failing": failing,
        "disabled": disabled,
    }
    status = graded(rate, s.failure_rate_warning, s.failure_rate_critical)
    message = f"{failed} of {polled} polls failed in the last {s.health_window:g} s ({rate:.0%})"
    recommendations = []
    if failing:
        recommendations.append("look at the errors: pollctl status --detailed")
    if disabled:
        message += f"; {len(disabled)} gateways auto-disabled"
        recommendations.append("fix the device, then `pollctl start --gateway NAME`")
        status = "warning" if status == "healthy" else status
    if status == "healthy":
        return CheckResult("gateways", "healthy", message, details)
    return CheckResult("gateways", status, message, details, recommendations)


def check_limits(ctx: Context) -> CheckResult:
    """Intervals inside the visibility timeout; endpoints whose polls take longer than
    their gateways' intervals allow (measured over the health window)."""
    rt = ctx.rt
    s = rt.settings
    gateways = _gateways(ctx)
    too_long = sorted(
        g.config.name for g in gateways.values() if g.config.interval > s.max_interval
    )
    since = ms_to_dt(rt.clock()) - timedelta(seconds=s.health_window)
    with rt.sessions() as session:
        stats = window_stats(session, since)
    load: dict[str, float] = {}
    for g in gateways.values():
        st = stats.get(g.id)
        if g.active and st and st.mean_duration_ms is not None:
            endpoint = f"{g.config.host}:{g.config.port}"
            share = st.mean_duration_ms / 1000 / g.config.interval
            load[endpoint] = load.get(endpoint, 0.0) + share
    saturated = {e: round(v, 2) for e, v in sorted(load.items()) if v > 1.0}
    details = {
        "visibility_timeout_s": s.visibility_timeout,
        "longest_interval_s": max((g.config.interval for g in gateways.values()), default=0),
        "too_long": too_long,
        "saturated_endpoints": saturated,
    }
    if too_long:
        return CheckResult(
            "limits",
            "error",
            f"{len(too_long)} gateways have intervals above {s.max_interval:g} s, half the "
            "broker's visibility timeout: their queued polls would be delivered twice",
            details,
            ["raise POLLING_VISIBILITY_TIMEOUT on every worker, or shorten those intervals"],
        )
    if saturated:
        return CheckResult(
            "limits",
            "warning",
            f"{len(saturated)} endpoints are busy polling for longer than their intervals "
            "allow (polls there are skipped or missed)",
            details,
            ["lengthen the intervals of the gateways behind them, or merge their points"],
        )
    return healthy(
        "limits", "intervals within the visibility timeout; no endpoint saturated", **details
    )


def check_buffer(ctx: Context) -> CheckResult:
    """Records waiting in Redis for the database, and any lost past the buffer's bound."""
    buffer = ctx.rt.buffer
    pending = buffer.pending()
    lost = buffer.lost()
    dead = buffer.dead_count()
    details = {"pending": pending, "limit": buffer.limit, "lost": lost.count, "refused": dead}
    if lost.count:
        first = ms_to_dt(lost.first_ms).isoformat() if lost.first_ms else "?"
        recent = lost.last_ms and ctx.rt.clock() - lost.last_ms < buffer_window_ms(ctx)
        return CheckResult(
            "buffer",
            "error" if recent else "warning",
            f"{lost.count} poll records lost since {first}: the database was unreachable "
            f"and the buffer ({buffer.limit}) was full",
            {**details, "first_lost": first},
            [
                "raise POLLING_BUFFER_LIMIT or keep the database up",
                "once noted, clear the count with `pollctl validate --ack-lost`",
            ],
            fixable=bool(pending),
        )
    if dead:
        oldest = buffer.dead(1)[0]
        return CheckResult(
            "buffer",
            "warning",
            f"{dead} buffered poll records were refused by the database and kept aside "
            f"(first: {oldest.reason})",
            {**details, "first_refused": oldest.reason},
            [
                "see them with `pollctl buffer show`",
                "once the cause is fixed, `pollctl buffer retry`; or `pollctl buffer drop`",
            ],
            fixable=bool(pending),
        )
    if pending:
        return CheckResult(
            "buffer",
            "warning",
            f"{pending} poll records wait in Redis for the database",
            details,
            ["they are written when the database answers (pollctl validate --fix flushes now)"],
            fixable=True,
        )
    return healthy("buffer", "no records waiting for the database", **details)


def buffer_window_ms(ctx: Context) -> int:
    return round(ctx.rt.settings.health_window * 1000)


def fix_buffer(ctx: Context, _result: CheckResult) -> list[str]:
    """Flush what waits. Losses are never cleared here: only an operator acknowledges them."""
    written = flush(ctx.rt)
    return [f"wrote {written} buffered records to the database"] if written else []
