"""The audit: what could poll a gateway twice from outside the chains' own guards.

More than one beat, polling workers running other code or another configuration, Celery
processes that do not heartbeat, keys left by retired chains, and queued poll messages
for gateways that are gone or chains that were replaced. Its checks are checks like the
diagnostics' (`diagnostics.run_checks` runs both).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

from . import configcache, heartbeat
from .checks.base import CheckResult, Context
from .diagnostics import Check, Diagnosis, Fix, run_checks
from .plan import PollTarget
from .queueview import QueuedStep
from .redisio import as_text


def audit(ctx: Context, *, fix: bool = False) -> Diagnosis:
    """Every audit check; with `fix`, the safe removals applied and checked again."""
    return run_checks(ctx, AUDIT_CHECKS, fix=fix)


def _gateways(ctx: Context) -> dict[int, PollTarget]:
    return {g.id: g for g in configcache.fleet(ctx.rt)}


def _beats(ctx: Context) -> CheckResult:
    beats = heartbeat.live_beats(ctx.rt.redis, ctx.rt.keys)
    names = [
        f"{b.name} pid {b.pid} on {b.host} ({'active' if b.active else 'standby'})" for b in beats
    ]
    if len(beats) <= 1:
        return CheckResult("beats", "healthy", f"{len(beats)} beat running", {"beats": names})
    return CheckResult(
        "beats",
        "warning",
        f"{len(beats)} beats running; the singleton lock lets one send, but one started "
        "with another scheduler would send everything twice",
        {"beats": names},
        ["run one beat unit (pollctl-beat.service); stop the others"],
    )


def _worker_versions(ctx: Context) -> CheckResult:
    rt = ctx.rt
    mine = (heartbeat.code_version(), heartbeat.config_fingerprint(rt.settings))
    workers = [w for w in heartbeat.live_workers(rt.redis, rt.keys) if w.polls]
    odd = [
        f"{w.name} (pid {w.pid} on {w.host}): code {w.version}, config {w.config}"
        for w in workers
        if (w.version, w.config) != mine
    ]
    details = {"expected": {"code": mine[0], "config": mine[1]}, "different": odd}
    if not odd:
        return CheckResult(
            "worker-versions", "healthy", f"{len(workers)} polling workers, all alike", details
        )
    return CheckResult(
        "worker-versions",
        "error",
        f"{len(odd)} polling workers run other code or another configuration than this host",
        details,
        ["deploy the same release and /etc/pollctl/pollctl.env everywhere, then restart them"],
    )


def _strays(ctx: Context) -> CheckResult:
    """Celery processes of this app that do not heartbeat: old releases, manual runs."""
    rt = ctx.rt
    known = heartbeat.live_workers(rt.redis, rt.keys)
    known_names = {w.name for w in known}
    beats = heartbeat.live_beats(rt.redis, rt.keys)
    host = socket.gethostname()
    known_pids = {p.pid for p in [*known, *beats] if p.host == host}
    strays = [
        f"pid {pid}: {cmd}"
        for pid, ppid, cmd in _celery_processes()
        if not {pid, ppid} & known_pids
    ]
    if ctx.consumers is not None:
        strays += [
            f"worker {name} consumes the polling queue without a heartbeat"
            for name in sorted(ctx.consumers())
            if name not in known_names
        ]
    if not strays:
        return CheckResult("processes", "healthy", "no Celery process without a heartbeat")
    return CheckResult(
        "processes",
        "warning",
        f"{len(strays)} Celery processes of this app without a pollctl heartbeat",
        {"strays": strays},
        ["stop processes not started by the pollctl units (systemctl list-units 'pollctl*')"],
    )


def _celery_processes() -> Iterator[tuple[int, int, str]]:
    """(pid, parent pid, command line) of local `celery -A workers.app` workers and beats."""
    me = os.getpid()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        text = " ".join(words)
        is_app = "workers.app" in text and any(w in ("worker", "beat") for w in words)
        if is_app and int(entry.name) != me and any("celery" in w for w in words[:3]):
            yield int(entry.name), ppid, text[:200]


def _leftover_keys(ctx: Context) -> CheckResult:
    """Chains of inactive gateways, and claims of retired chains that never expire. Claims
    with a TTL (every claim a poll takes has one) go on their own within it: after any
    stop they are normal, not findings (counted in the details, shown with --verbose)."""
    rt, gateways = ctx.rt, _gateways(ctx)
    stale = list(_stale_claims(ctx, gateways))
    claims = [key for key, ttl_ms in stale if ttl_ms < 0]
    expiring = [ttl_ms for _, ttl_ms in stale if ttl_ms >= 0]
    chains = [gid for gid in rt.chains.all() if gid not in gateways or not gateways[gid].active]
    details = {
        "claims": claims[:50],
        "chains": chains,
        "expiring_claims": len(expiring),
        "expiring_within_s": round(max(expiring, default=0) / 1000, 1),
    }
    if not claims and not chains:
        note = (
            f" ({len(expiring)} slot claims of retired chains expire on their own within "
            f"{details['expiring_within_s']:g} s)"
            if expiring
            else ""
        )
        return CheckResult("keys", "healthy", f"no keys left by retired chains{note}", details)
    return CheckResult(
        "keys",
        "warning",
        f"{len(chains)} chains of inactive gateways and {len(claims)} slot claims of "
        "retired chains left in Redis",
        details,
        ["pollctl audit --fix removes them"],
        fixable=True,
    )


def _stale_claims(ctx: Context, gateways: dict[int, PollTarget]) -> list[tuple[str, int]]:
    """Claims of gateways without a live chain whose slot has ended, with their TTL in ms
    (-1: none): no task can still be polling them, so removing them cannot let a slot be
    polled twice."""
    rt = ctx.rt
    live = rt.chains.all()
    now = rt.clock()
    found = []
    for raw in rt.redis.scan_iter(match=rt.keys.claims_pattern, count=1000):
        key = as_text(raw)
        gateway_id, slot = rt.keys.claim_slot(key)
        gateway = gateways.get(gateway_id)
        interval_ms = round(1000 * gateway.config.interval) if gateway else 0
        if gateway_id not in live and slot + interval_ms < now:
            found.append(key)
    pipe = rt.redis.pipeline(transaction=False)
    for key in found:
        pipe.pttl(key)
    # -2: gone meanwhile (expired): nothing to report.
    return [(key, ttl) for key, ttl in zip(found, pipe.execute(), strict=True) if ttl != -2]


def _delete_leftover_keys(ctx: Context, _found: CheckResult) -> list[str]:
    rt, gateways = ctx.rt, _gateways(ctx)
    actions = []
    for gid in rt.chains.all():
        if gid not in gateways or not gateways[gid].active:
            rt.chains.retire(gid)
            actions.append(f"retired chain of gateway #{gid}")
    claims = [key for key, _ in _stale_claims(ctx, gateways)]
    if claims:
        rt.redis.delete(*claims)
        actions.append(f"deleted {len(claims)} slot claims of retired chains")
    return actions


def _foreign_steps(ctx: Context) -> Iterator[tuple[QueuedStep, str]]:
    if ctx.queues is None:
        return
    gateways = _gateways(ctx)
    live = ctx.rt.chains.all()
    for step in ctx.queues.queued_steps():
        if step.gateway_id not in gateways:
            yield step, "unknown gateway"
        elif (chain := live.get(step.gateway_id)) is None or chain.token != step.token:
            yield step, "replaced chain"


def _queued_messages(ctx: Context) -> CheckResult:
    if ctx.queues is None:
        return CheckResult("messages", "healthy", "not inspected: no view of the broker here")
    found = list(_foreign_steps(ctx))
    unknown = sum(1 for _, why in found if why == "unknown gateway")
    held = sum(1 for m, _ in found if m.held)
    details = {
        "unknown_gateway": unknown,
        "replaced_chain": len(found) - unknown,
        "held_by_workers": held,
    }
    if len(found) == held:
        # A stopped chain's next step, held by a worker until its time: it dies unpolled
        # then, on its own, as after every stop. Not a finding (details with --verbose).
        note = f" ({held} of stopped chains held by workers die unpolled when due)" if held else ""
        return CheckResult(
            "messages", "healthy", f"every waiting poll belongs to a live chain{note}", details
        )
    return CheckResult(
        "messages",
        "warning",
        f"{len(found) - held} waiting polls for unknown gateways or replaced chains; each dies "
        "unpolled when delivered",
        details,
        ["pollctl audit --fix removes them"],
        fixable=True,
    )


def _drop_queued_messages(ctx: Context, _found: CheckResult) -> list[str]:
    assert ctx.queues is not None  # fixable only when inspected
    # A batch message goes only when every step in it is foreign: the others are live chains.
    foreign: dict[object, list[QueuedStep]] = {}
    for step, _ in _foreign_steps(ctx):
        if not step.held:
            foreign.setdefault(step.message, []).append(step)
    removed = sum(
        ctx.queues.remove(steps[0]) for steps in foreign.values() if len(steps) == steps[0].size
    )
    return [f"removed {removed} waiting poll messages of unknown gateways or replaced chains"]


AUDIT_CHECKS: tuple[tuple[Check, Fix | None], ...] = (
    (_beats, None),
    (_worker_versions, None),
    (_strays, None),
    (_leftover_keys, _delete_leftover_keys),
    (_queued_messages, _drop_queued_messages),
)
