"""The alert lifecycle: findings open alerts (NEW), an open alert is sent again only after
the cooldown, an acknowledged one (ACKED) is not sent again, and one whose finding is gone
is RESOLVED and announced once. A gateway that is down holds its other alerts.

`run` is what the diagnostics task calls after its checks: evaluate, apply in one
transaction, deliver outside it (bounded), then mark what went out and publish each
transition on the live feed (`Keys.live("alerts")`)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from sqlalchemy import update
from sqlalchemy.orm import Session

from ..checks.base import CheckResult
from ..errors import ConfigError
from ..models import AlertRow
from ..runtime import Runtime
from ..schedule import ms_to_dt
from ..timefmt import iso_z
from .delivery import Deliverer, Notification, channels_of
from .inputs import fleet_state
from .rules import Evaluation, Limits, evaluate
from .store import NEW, RESOLVED, ack, as_json, open_alerts

log = logging.getLogger(__name__)

RANK = {"warning": 1, "critical": 2}


@dataclass
class Plan:
    """What one evaluation changed, as JSON snapshots of the alerts (ids included)."""

    opened: list[dict] = field(default_factory=list)
    #: Open alerts to send again: the cooldown passed, the severity rose, or no channel
    #: took the previous notice.
    resend: list[dict] = field(default_factory=list)
    resolved: list[dict] = field(default_factory=list)


def apply(session: Session, evaluation: Evaluation, now: datetime, cooldown: float) -> Plan:
    """Bring the `alerts` table in line with `evaluation` (flushes, does not commit)."""
    plan = Plan()
    held = {(row.rule, row.subject): row for row in open_alerts(session)}
    changed: list[tuple[list[dict], AlertRow]] = []
    for finding in evaluation.findings:
        row = held.pop((finding.rule, finding.subject), None)
        if row is None:
            row = AlertRow(
                rule=finding.rule,
                subject=finding.subject,
                gateway_id=finding.gateway_id,
                severity=finding.severity,
                state=NEW,
                message=finding.message,
                first_at=now,
                last_at=now,
            )
            session.add(row)
            changed.append((plan.opened, row))
            continue
        rose = RANK[finding.severity] > RANK.get(row.severity, 0)
        row.severity, row.message, row.last_at = finding.severity, finding.message, now
        row.gateway_id = finding.gateway_id
        if row.state == NEW and (rose or _due(row.notified_at, now, cooldown)):
            changed.append((plan.resend, row))
    for row in held.values():
        if row.gateway_id is not None and row.gateway_id in evaluation.down:
            continue  # its gateway is down: one "gateway offline" speaks for it
        row.state, row.resolved_at = RESOLVED, now
        changed.append((plan.resolved, row))
    session.flush()
    for bucket, row in changed:
        bucket.append(as_json(row))
    return plan


def _due(notified_at: datetime | None, now: datetime, cooldown: float) -> bool:
    return notified_at is None or now - notified_at >= timedelta(seconds=cooldown)


def notification(alert: dict, event: str) -> Notification:
    """What a channel receives for an alert `opened`, `renotified` or `resolved`."""
    head = f"{alert['rule']} {alert['subject']}"
    if event == "resolved":
        return Notification(
            f"pollctl RESOLVED: {head}",
            f"resolved: {alert['message']} (alert {alert['id']}, open since {alert['first_at']})",
            "success",
        )
    again = " (again)" if event == "renotified" else ""
    return Notification(
        f"pollctl {alert['severity'].upper()}: {head}{again}",
        f"{alert['message']}\n(alert {alert['id']}, open since {alert['first_at']}; "
        f"`pollctl alerts ack {alert['id']}` silences it)",
        "failure" if alert["severity"] == "critical" else "warning",
    )


@dataclass(frozen=True)
class RunReport:
    opened: int
    renotified: int
    resolved: int
    #: Notifications that reached no channel (channel failures are logged and counted).
    undelivered: int


def deliverer(rt: Runtime) -> Deliverer:
    """The channels of POLLING_ALERT_URLS; a URL apprise cannot use is logged and left out
    (the others still deliver; `pollctl alerts test` names it)."""
    s = rt.settings
    channels = []
    for url in s.alert_url_list:
        try:
            channels += channels_of([url])
        except ConfigError as exc:
            log.error("%s", exc)
    return Deliverer(
        channels,
        attempts=s.alert_attempts,
        timeout=s.alert_timeout,
        redis_client=rt.redis,
        keys=rt.keys,
    )


def run(
    rt: Runtime,
    results: Sequence[CheckResult],
    *,
    now: datetime | None = None,
    sender: Deliverer | None = None,
) -> RunReport | None:
    """Evaluate the rules over the database and `results` (the diagnostics run's), apply,
    deliver, publish. None when another process is evaluating (its lock held)."""
    now = now or ms_to_dt(rt.clock())
    sender = sender or deliverer(rt)
    lock = rt.redis.lock(rt.keys.alerts_lock, timeout=sender.timeout * 2 + 60, blocking=False)
    if not lock.acquire():
        log.info("alerts: another process is evaluating them")
        return None
    try:
        return _run(rt, results, now, sender)
    finally:
        with contextlib.suppress(redis.RedisError):  # expired: the next run takes it
            lock.release()


def _run(
    rt: Runtime, results: Sequence[CheckResult], now: datetime, sender: Deliverer
) -> RunReport:
    with rt.sessions() as session, session.begin():
        evaluation = evaluate(fleet_state(session, now, results), Limits.of(rt.settings))
        plan = apply(session, evaluation, now, rt.settings.alert_cooldown)
    sends = (
        [(a, "opened") for a in plan.opened]
        + [(a, "renotified" if a["notified_at"] else "opened") for a in plan.resend]
        + [(a, "resolved") for a in plan.resolved]
    )
    delivered = sender.send([notification(a, event) for a, event in sends])
    went_out = [
        a["id"]
        for (a, event), channels in zip(sends, delivered, strict=True)
        if event != "resolved" and (any(channels.values()) or not channels)
    ]
    if went_out:
        with rt.sessions() as session, session.begin():
            session.execute(
                update(AlertRow).where(AlertRow.id.in_(went_out)).values(notified_at=now)
            )
    for alert, event in sends:
        if event == "opened" and alert not in plan.opened:
            continue  # a retry of a first notice no channel took: no new transition
        notified = iso_z(now) if alert["id"] in went_out else alert["notified_at"]
        publish(rt, event, {**alert, "notified_at": notified})
    undelivered = sum(1 for channels in delivered if channels and not any(channels.values()))
    return RunReport(
        len(plan.opened),
        sum(1 for _, e in sends if e == "renotified"),
        len(plan.resolved),
        undelivered,
    )


def publish(rt: Runtime, event: str, alert: dict) -> None:
    """One transition on the live feed; a failure here is logged, never raised."""
    try:
        message = json.dumps({"event": event, "alert": alert})
        rt.redis.publish(rt.keys.live("alerts"), message)
    except (redis.RedisError, TypeError, ValueError) as exc:
        log.warning("alert %s of %s not published: %s", event, alert.get("id"), exc)


def acknowledge(rt: Runtime, alert_id: int, *, note: str | None, by: str) -> dict:
    """Ack an alert (see `store.ack`) and publish it; returns the alert as JSON."""
    with rt.sessions() as session, session.begin():
        row = ack(session, alert_id, now=ms_to_dt(rt.clock()), note=note, by=by)
        alert = as_json(row)
    publish(rt, "acked", alert)
    return alert
