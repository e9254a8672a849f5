"""Checks of the services pollctl runs on: Redis, the database, workers, beat, queues."""

from __future__ import annotations

import socket
import uuid

import redis

from .. import heartbeat
from ..errors import ServiceUnavailable
from ..fleetclock import SKEW_WARNING_MS, FleetClock, describe
from ..migrate import current_revision, head_revision
from ..redisio import as_text
from ..runtime import check_redis
from ..settings import mask_url
from .base import CheckResult, Context, graded, healthy

WORKER_COMMAND = "systemctl start pollctl-worker@1 (or `celery -A workers.app worker -Q polling`)"


def check_redis_service(ctx: Context) -> CheckResult:
    """Reachable, and unable to evict our keys (a lost token or claim breaks exactly-once)."""
    rt = ctx.rt
    try:
        check_redis(rt.redis, rt.settings.redis_url)
    except ServiceUnavailable as exc:
        return CheckResult("redis", "error", str(exc), recommendations=["start Redis"])
    try:
        config = rt.redis.config_get("maxmemory*")
    except redis.ResponseError:
        return CheckResult(
            "redis",
            "warning",
            "reachable, but CONFIG GET is refused: cannot tell whether keys can be evicted",
            recommendations=["make sure the server runs with maxmemory-policy noeviction"],
        )
    policy = config.get("maxmemory-policy", "noeviction")
    limit = int(config.get("maxmemory", 0) or 0)
    details = {"maxmemory": limit, "maxmemory-policy": policy}
    if policy != "noeviction" and limit:
        return CheckResult(
            "redis",
            "error",
            f"maxmemory {limit} with policy {policy}: chain tokens, claims and queued polls "
            "can be evicted",
            details,
            ["set `maxmemory-policy noeviction` in redis.conf"],
        )
    if policy != "noeviction":
        return CheckResult(
            "redis",
            "warning",
            f"policy {policy} would evict our keys once a maxmemory is set",
            details,
            ["set `maxmemory-policy noeviction` in redis.conf"],
        )
    return healthy(
        "redis", f"reachable at {mask_url(rt.settings.redis_url)}, noeviction", **details
    )


def check_database_service(ctx: Context) -> CheckResult:
    rt = ctx.rt
    url = mask_url(rt.settings.database_url)
    try:
        current = current_revision(rt.engine)
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return CheckResult(
            "database",
            "error",
            f"database {url} is unreachable: {reason}",
            recommendations=["start the database; polls are buffered in Redis meanwhile"],
        )
    head = head_revision()
    if current != head:
        return CheckResult(
            "database",
            "error",
            f"schema at {current or 'nothing'}, code expects {head}",
            {"current": current, "head": head},
            ["pollctl db upgrade"],
        )
    return healthy("database", f"reachable at {url}, schema at head {head}")


def check_workers(ctx: Context) -> CheckResult:
    """Some worker consumes `polling` (heartbeats), and a canary sent there comes back."""
    rt = ctx.rt
    workers = heartbeat.live_workers(rt.redis, rt.keys)
    pollers = [w.name for w in workers if w.polls]
    details: dict = {"workers": [w.name for w in workers], "polling": pollers}
    if not pollers:
        return CheckResult(
            "workers",
            "error",
            "no live worker consumes the polling queue: no gateway is being polled",
            details,
            [f"start a polling worker: {WORKER_COMMAND}"],
        )
    if ctx.canary is None:
        return healthy("workers", f"{len(pollers)} workers consume polling", **details)
    timeout = rt.settings.canary_timeout
    nonce = uuid.uuid4().hex
    key = rt.keys.canary(nonce)
    ctx.canary(nonce, timeout)
    reply = rt.redis.blpop([key], timeout=timeout)
    if reply is None:
        return CheckResult(
            "workers",
            "error",
            f"{len(pollers)} workers heartbeat, but a canary on the polling queue did not "
            f"come back within {timeout:g} s",
            details,
            [
                "restart the polling workers (systemctl restart 'pollctl-worker@*'): they "
                "died, or stopped consuming after a broker reconnect",
                "or, if the polling queue has a backlog (pollctl diagnose), add workers",
            ],
        )
    details["canary_served_by"] = as_text(reply[1])
    return healthy(
        "workers", f"{len(pollers)} workers consume polling; canary came back", **details
    )


def check_beat(ctx: Context) -> CheckResult:
    rt = ctx.rt
    beats = heartbeat.live_beats(rt.redis, rt.keys)
    active = [b for b in beats if b.active]
    names = [
        f"{b.name} (pid {b.pid} on {b.host}, {'active' if b.active else 'standby'})" for b in beats
    ]
    details = {"beats": names}
    if not beats:
        return CheckResult(
            "beat",
            "error",
            "no beat is running: dead chains are not restarted, diagnostics do not run",
            details,
            ["systemctl start pollctl-beat (or `celery -A workers.app beat`)"],
        )
    if not active:
        return CheckResult(
            "beat",
            "warning",
            f"{len(beats)} beats, none active (the singleton lock is changing hands)",
            details,
        )
    standby = len(beats) - len(active)
    note = f", {standby} standing by" if standby else ""
    return healthy("beat", f"one active beat{note}", **details)


def check_clocks(ctx: Context) -> CheckResult:
    """Every worker's and beat's clock (from their heartbeats), and this host's, against
    Redis's: the fleet decides on Redis's, but Celery times ETA messages by each host's."""
    rt = ctx.rt
    skews: dict[str, int] = {}
    for info in heartbeat.live_workers(rt.redis, rt.keys) + heartbeat.live_beats(rt.redis, rt.keys):
        if info.skew_ms is not None:
            skews[f"{info.name} on {info.host}"] = info.skew_ms
    if isinstance(rt.clock, FleetClock) and (own := rt.clock.measure()) is not None:
        skews[f"this host ({socket.gethostname()})"] = own
    details: dict = {"skew_ms": skews, "bound_s": rt.settings.clock_skew_max}
    bound_ms = rt.settings.clock_skew_max * 1000
    off = {name: ms for name, ms in skews.items() if abs(ms) > SKEW_WARNING_MS}
    if not off:
        return healthy("clocks", f"{len(skews)} clocks within 0.5 s of Redis's", **details)
    past = [name for name, ms in off.items() if abs(ms) > bound_ms]
    listed = "; ".join(f"{name} {describe(ms)}" for name, ms in sorted(off.items()))
    return CheckResult(
        "clocks",
        "error" if past else "warning",
        f"clocks off: {listed}"
        + (
            " (past the bound: those workers do not poll, reconcile does not run there)"
            if past
            else ""
        ),
        details,
        ["fix time sync on those hosts (chrony or systemd-timesyncd against one source)"],
    )


def check_queues(ctx: Context) -> CheckResult:
    """Depth and the age of the oldest due message per queue; what workers hold unacked."""
    rt = ctx.rt
    s = rt.settings
    if ctx.queues is None:
        return healthy("queues", "not inspected: no view of the broker here")
    now = rt.clock()
    states = ctx.queues.queues(now)
    unacked = ctx.queues.unacked(now)
    details: dict = {q.name: {"waiting": q.waiting, "oldest_age_s": q.oldest_age} for q in states}
    details["unacked"] = {"count": unacked.count, "oldest_age_s": unacked.oldest_age}
    worst = max((q.oldest_age or 0.0 for q in states), default=0.0)
    status = graded(worst, s.backlog_warning, s.backlog_critical)
    summary = ", ".join(f"{q.name} {q.waiting}" for q in states)
    if status == "healthy":
        return healthy("queues", f"waiting: {summary}", **details)
    late = max(states, key=lambda q: q.oldest_age or 0.0)
    return CheckResult(
        "queues",
        status,
        f"the oldest message in {late.name} has waited {worst:.1f} s ({summary})",
        details,
        [
            "add polling workers or concurrency (one worker instance per core)",
            "check that workers are consuming (pollctl validate runs a canary)",
        ],
    )
