"""Thin tasks: each calls into `polling` with this process's state and hands what it returns
to the step sender. Shared tasks: they belong to whichever app `create_app` built."""

from __future__ import annotations

import logging
import time

from celery import Task, shared_task
from sqlalchemy.exc import DBAPIError

from polling import (
    alerts,
    configcache,
    diagnostics,
    logsetup,
    pipeline,
    recovery,
    replies,
    retention,
    service,
    writes,
)
from polling.errors import PollingError
from polling.runtime import Runtime
from polling.schedule import ms_to_dt
from polling.sites import DEFAULT_SITE
from polling.values import cell, shown

from . import process
from .control import check_context
from .queues import (
    CANARY_TASK,
    CLEANUP_TASK,
    DIAGNOSE_TASK,
    POLL_BATCH_TASK,
    POLL_NOW_TASK,
    PROBE_TASK,
    RECONCILE_TASK,
    WRITE_TASK,
)
from .senders import send_batch, send_probe, step_sender

log = logging.getLogger(__name__)


@shared_task(name=POLL_BATCH_TASK, ignore_result=True, bind=True)
def poll_batch(self: Task, steps: list[list], site: str = DEFAULT_SITE) -> dict[str, int]:
    """One step of each chain in `steps` ([gateway id, token, slot ms], slots in one
    window, gateways of `site`); the successors of the chains it advanced go to this
    process's sender, each to its gateway's site."""
    state = process.current(self.app)
    batch = [(int(g), str(t), int(s)) for g, t, s in steps]
    if trouble := state.runtime.clock_trouble():
        # Another worker takes the batch; this one stops consuming (see workers.heartbeat).
        log.error("batch of %d steps handed back, not polled: %s", len(steps), trouble)
        send_batch(self.app, batch, configcache.names(state.runtime), site)
        return {"handed back": len(steps)}
    started = time.monotonic()
    with logsetup.bound(task_id=self.request.id):
        result = pipeline.poll_batch(state.runtime, batch, site)
        for successor_site, successors in result.by_site().items():
            state.sender.put(successors, successor_site)
        log.info("%s", _batch_line(len(steps), result, time.monotonic() - started))
    return {str(outcome): n for outcome, n in result.outcomes.items()}


#: Failed gateways named in a batch's line, at most (the rest are counted).
NAMED_FAILURES = 5


def _batch_line(size: int, result: pipeline.BatchResult, elapsed_s: float) -> str:
    """One INFO line per batch (per-poll lines are DEBUG): journald holds up at 1,000
    polls/s, and a failing gateway is still named."""
    counts = ", ".join(f"{n} {o}" for o, n in sorted(result.outcomes.items()))
    line = f"batch of {size} steps in {elapsed_s * 1000:.0f} ms: {counts or 'nothing to do'}"
    if result.shed:
        line += f" ({result.shed} shed: the worker began them too late after their slots)"
    if result.failed:
        names = sorted(result.failed)
        more = len(names) - NAMED_FAILURES
        line += f"; failed: {', '.join(names[:NAMED_FAILURES])}" + (
            f" and {more} more" if more > 0 else ""
        )
    return line


@shared_task(name=RECONCILE_TASK, ignore_result=True, bind=True)
def reconcile(self: Task) -> dict[str, int]:
    rt = process.current(self.app).runtime
    if trouble := rt.clock_trouble():
        log.error("reconcile refused: %s", trouble)
        return {}
    began = time.monotonic()
    steps = step_sender(self.app, rt.settings, configcache.names(rt))
    report = service.reconcile(rt, steps.add)
    steps.send_all()
    try:
        probes = recovery.claim_due(rt)
    except DBAPIError as exc:  # the chains above are what matters; probes wait for the database
        log.warning("recovery probes not claimed: %s", exc.orig or exc)
        probes = []
    site_of = configcache.sites(rt)
    for gateway_id in probes:
        send_probe(self.app, gateway_id, max(rt.settings.recovery_first, 5.0), site_of(gateway_id))
    if actions := report.repairs():
        diagnostics.record_reconcile(rt, actions)
    log.info(
        "reconcile in %.3f s: %d started, %d restarted, %d retired, %d missed slots recorded",
        time.monotonic() - began,
        len(report.started),
        len(report.restarted),
        len(report.retired),
        report.missed,
    )
    return {
        "started": len(report.started),
        "restarted": len(report.restarted),
        "retired": len(report.retired),
        "missed": report.missed,
        "flushed": report.flushed,
    }


@shared_task(name=DIAGNOSE_TASK, ignore_result=True, bind=True)
def diagnose(self: Task) -> str:
    """Every check, with the safe repairs applied and the run recorded; then the alerts."""
    rt = process.current(self.app).runtime
    steps = step_sender(self.app, rt.settings, configcache.names(rt))
    diagnosis = diagnostics.diagnose(check_context(self.app, rt, steps.add), fix=True)
    steps.send_all()
    for result in diagnosis.results:
        if result.status != "healthy":
            log.warning("diagnostics: %s %s: %s", result.status, result.component, result.message)
    for component, actions in diagnosis.repairs.items():
        log.warning("diagnostics repaired %s: %s", component, "; ".join(actions))
    try:
        diagnostics.record(rt, diagnosis)
    except Exception as exc:  # the database may be the very thing that is down
        log.warning("diagnostic run not recorded: %s", exc)
    _alerts(rt, diagnosis)
    return diagnosis.health


@shared_task(name=PROBE_TASK, ignore_result=True, bind=True)
def probe(self: Task, gateway_id: int) -> str | None:
    """Recovery's probe of one gateway its failures disabled (see polling/recovery.py)."""
    rt = process.current(self.app).runtime
    if trouble := rt.clock_trouble():
        log.error("probe of gateway #%s not run: %s", gateway_id, trouble)
        return None
    steps = step_sender(self.app, rt.settings, configcache.names(rt))
    served = recovery.probe(rt, int(gateway_id), steps.add)
    steps.send_all()
    return str(served.outcome) if served else None


def _alerts(rt: Runtime, diagnosis: diagnostics.Diagnosis) -> None:
    """The alert rules judge this run's results (one source of truth with `validate`);
    delivery is bounded by POLLING_ALERT_TIMEOUT, and nothing here fails the task."""
    try:
        report = alerts.run(rt, diagnosis.results)
    except Exception as exc:
        log.warning("alerts not evaluated: %s: %s", type(exc).__name__, exc)
        return
    if report and (report.opened or report.renotified or report.resolved):
        log.warning(
            "alerts: %d opened, %d sent again, %d resolved, %d reached no channel",
            report.opened,
            report.renotified,
            report.resolved,
            report.undelivered,
        )


@shared_task(name=CANARY_TASK, ignore_result=True, bind=True)
def canary(self: Task, nonce: str) -> None:
    """Proof that a worker consumes the polling queue: answer on the nonce's list."""
    rt = process.current(self.app).runtime
    key = rt.keys.canary(nonce)
    pipe = rt.redis.pipeline()
    pipe.rpush(key, self.request.hostname or "?")
    pipe.expire(key, 60)
    pipe.execute()


@shared_task(name=CLEANUP_TASK, ignore_result=True, bind=True)
def cleanup(self: Task) -> dict[str, int]:
    """Beat's daily retention: the partitions of the days ahead, then each table trimmed to
    its POLLING_RETAIN_* period (what `pollctl cleanup` does)."""
    rt = process.current(self.app).runtime
    reports, created = retention.run(rt.engine, rt.settings, now=ms_to_dt(rt.clock()))
    if created:
        log.info("retention: partitions made ahead: %s", ", ".join(created))
    for report in reports:
        log.info("retention: %s", report.line(dry_run=False))
    return {report.table: report.removed for report in reports}


@shared_task(name=POLL_NOW_TASK, ignore_result=True, bind=True)
def poll_now(self: Task, name: str, nonce: str) -> None:
    """`pollctl poll-now` of a gateway only this site's workers reach, over this worker's
    own connection to it; the answer goes back on the nonce's reply list."""
    rt = process.current(self.app).runtime
    if not replies.take(rt.redis, rt.keys, nonce, replies.WORKER):
        log.warning("poll-now of %s not run: the command line stopped waiting", name)
        return
    try:
        served = service.poll_now(rt, name)
        payload = {
            "outcome": str(served.outcome),
            "error": served.error,
            "values": [[p.name, cell(shown(p, v)), p.unit] for p, v in served.values],
        }
    except Exception as exc:  # the command line waits for an answer, whatever happened
        payload = {"outcome": "failed", "error": _command_error(exc), "values": []}
    replies.answer(rt.redis, rt.keys, nonce, payload)


@shared_task(name=WRITE_TASK, ignore_result=True, bind=True)
def write(self: Task, gateway: str, point: str, value: str, user: str, nonce: str) -> None:
    """`pollctl write` to a gateway only this site's workers reach, over this worker's own
    connection (a serial line has room for one client), under the endpoint's lock."""
    rt = process.current(self.app).runtime
    if not replies.take(rt.redis, rt.keys, nonce, replies.WORKER):
        log.warning("write to %s/%s not run: the command line stopped waiting", gateway, point)
        return
    try:
        planned = writes.plan_write(rt, gateway, point, value)
        result = writes.write(rt, planned, user=user, pool=rt.modbus)
        payload = {
            "outcome": result.outcome,
            "error": result.error,
            "old": result.old,
            "read_back": result.read_back,
        }
    except Exception as exc:
        payload = {"outcome": "refused", "error": _command_error(exc)}
    replies.answer(rt.redis, rt.keys, nonce, payload)


def _command_error(exc: Exception) -> str:
    if isinstance(exc, PollingError):
        return str(exc)
    log.exception("command failed")
    return f"unexpected error: {type(exc).__name__}: {exc}"
