"""Checks of the services pollctl runs on: Redis, the database, workers, beat, queues."""

from __future__ import annotations

import socket
import time
import uuid

import redis

from .. import configcache, heartbeat
from ..errors import ServiceUnavailable
from ..fleetclock import SKEW_WARNING_MS, FleetClock, describe
from ..migrate import current_revision, head_revision
from ..redisio import as_text
from ..runtime import check_redis
from ..settings import mask_url
from ..sites import DEFAULT_SITE, sites_of
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


#: What PostgreSQL answers when it is up but will not take the URL's user, password or
#: database (psycopg gives these connection failures no SQLSTATE to go by).
LOGIN_REFUSED = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "no password supplied",
)


def _database_remedy(reason: str) -> str:
    if any(marker in reason for marker in LOGIN_REFUSED):
        return (
            "check POLLING_DATABASE_URL: the server answers but refuses its user, password or "
            "database"
        )
    return "start the database; polls are buffered in Redis meanwhile"


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
            recommendations=[_database_remedy(reason)],
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


def check_workers(ctx: Context) -> list[CheckResult]:
    """Per site with enabled gateways (`default` alone in a fleet without any): some live
    worker consumes the site's polling queue (heartbeats), and a canary sent there comes
    back. One result per site, `workers` for the default site and `workers:SITE` for the
    others, so a site nobody serves is critical alone and the others stay healthy."""
    rt = ctx.rt
    workers = heartbeat.live_workers(rt.redis, rt.keys)
    serving = heartbeat.serving(workers)
    sites = sites_of(g.config.site for g in configcache.fleet(rt) if g.enabled)
    names = [w.name for w in workers]
    # Every canary goes out first, then each is awaited within the one timeout.
    nonces = {site: _send_canary(ctx, site) for site in sites if serving.get(site)}
    deadline = time.monotonic() + rt.settings.canary_timeout
    alone = sites == [DEFAULT_SITE]
    return [
        _site_workers(ctx, site, names, serving.get(site, []), nonces.get(site), deadline, alone)
        for site in sites
    ]


def workers_component(site: str) -> str:
    """The check result's component for a site: `workers`, or `workers:SITE`."""
    return "workers" if site == DEFAULT_SITE else f"workers:{site}"


def _send_canary(ctx: Context, site: str) -> str | None:
    if ctx.canary is None:
        return None
    nonce = uuid.uuid4().hex
    ctx.canary(nonce, ctx.rt.settings.canary_timeout, site)
    return nonce


def _site_workers(
    ctx: Context,
    site: str,
    workers: list[str],
    pollers: list[str],
    nonce: str | None,
    deadline: float,
    alone: bool,
) -> CheckResult:
    rt = ctx.rt
    component = workers_component(site)
    queue = "the polling queue" if site == DEFAULT_SITE else f"site {site}'s polling queue"
    details: dict = {"site": site, "workers": workers, "polling": pollers}
    served = f"site {site}: served by {', '.join(pollers[:5])}" + (
        f" and {len(pollers) - 5} more" if len(pollers) > 5 else ""
    )
    if not pollers:
        gateways = "no gateway" if alone else f"no gateway of site {site}"
        return CheckResult(
            component,
            "error",
            f"no live worker consumes {queue}: {gateways} is being polled",
            details,
            [f"start a polling worker for site {site}: {worker_command(site)}"],
        )
    if nonce is None:
        return healthy(component, f"{served}; {len(pollers)} workers consume it", **details)
    timeout = rt.settings.canary_timeout
    reply = rt.redis.blpop([rt.keys.canary(nonce)], timeout=max(0.01, deadline - time.monotonic()))
    if reply is None:
        return CheckResult(
            component,
            "error",
            f"{len(pollers)} workers of site {site} heartbeat, but a canary on {queue} did "
            f"not come back within {timeout:g} s",
            details,
            [
                "restart the polling workers (systemctl restart 'pollctl-worker@*'): they "
                "died, or stopped consuming after a broker reconnect",
                "or, if the polling queue has a backlog (pollctl diagnose), add workers",
            ],
        )
    details["canary_served_by"] = as_text(reply[1])
    return healthy(component, f"{served}; canary came back", **details)


def worker_command(site: str) -> str:
    if site == DEFAULT_SITE:
        return WORKER_COMMAND
    return (
        f"POLLING_SITES={site} in /etc/pollctl/worker-N.env, then systemctl start "
        f"pollctl-worker@N (or `POLLING_SITES={site} celery -A workers.app worker -Q polling`)"
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
