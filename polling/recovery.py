"""Automatic recovery of gateways their failures disabled: a circuit breaker.

The failure threshold opens the breaker (records.py sets `next_probe_at` and
`probe_delay_s`). When the probe is due, reconcile claims it and a worker polls the
gateway once, through the usual path (endpoint lock, recorded with kind 'probe', outside
slot accounting: the half-open state). A success closes the breaker: the gateway is
enabled again and its chain starts at the next slot, the slots it spent disabled being a
pause, not missed polls. A failure doubles the delay, up to `POLLING_RECOVERY_MAX`. The
operator's `enabled: false` and `pollctl stop` are never probed: the first clears the
breaker, the second leaves nobody expecting polls."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select, update

from . import live, planstore, service
from .accounting import Served
from .models import GatewayRow
from .outcome import Outcome, PollKind
from .pipeline import poll_once
from .repository import StoredGateway, load_gateways_by_id
from .runtime import Runtime
from .schedule import ms_to_dt

log = logging.getLogger(__name__)

_table = GatewayRow.__table__
#: A breaker that is open and whose gateway is still wanted (started, not re-enabled).
_OPEN = (
    _table.c.enabled.is_(False),
    _table.c.polling.is_(True),
    _table.c.probe_delay_s.is_not(None),
    _table.c.next_probe_at.is_not(None),
)


def claim_due(rt: Runtime) -> list[int]:
    """Gateways whose probe is due, each claimed by moving its probe one delay ahead (a
    lease: a probe lost with its worker is tried again then) only if nobody moved it
    first, so two reconciles never probe one gateway twice."""
    now = ms_to_dt(rt.clock())
    claimed = []
    with rt.sessions() as session, session.begin():
        due = session.execute(
            select(_table.c.id, _table.c.next_probe_at, _table.c.probe_delay_s).where(
                *_OPEN, _table.c.next_probe_at <= now
            )
        ).all()
        for gateway_id, was, delay in due:
            moved = session.execute(
                update(_table)  # type: ignore[arg-type]
                .where(_table.c.id == gateway_id, _table.c.next_probe_at == was)
                .values(
                    next_probe_at=now + timedelta(seconds=delay or rt.settings.recovery_first),
                    updated_at=_table.c.updated_at,
                )
                .returning(_table.c.id)
            ).first()
            if moved is not None:
                claimed.append(gateway_id)
    return claimed


def probe(rt: Runtime, gateway_id: int, enqueue: service.Enqueue) -> Served | None:
    """Poll a gateway whose breaker is open; close it on success, back off on failure.
    None when there was nothing to probe (re-enabled, stopped or deleted meanwhile)."""
    stored = _still_open(rt, gateway_id)
    if stored is None:
        return None
    with rt.sessions() as session:
        target = planstore.targets(session, [stored], rt.settings)[0]
    name = target.config.name
    served = poll_once(rt, target, PollKind.PROBE)
    now = ms_to_dt(rt.clock())
    if served.outcome is Outcome.OK:
        if _close(rt, gateway_id, now):
            rt.bump_config()
            reloaded = service.select_gateways(rt, [name])[0]
            service.start_chains(rt, enqueue, [(reloaded, None)], rt.clock())
            log.warning(
                "gateway %s recovered: a probe succeeded, polling again from its next slot",
                name,
                extra={"gateway": name},
            )
            live.publish_transition(rt.redis, rt.keys, name, "recovered")
        return served
    delay = _back_off(rt, gateway_id, now, served.outcome is Outcome.FAILED)
    if delay is not None:
        log.warning(
            "gateway %s still down: probe %s (%s); next probe in %.0f s",
            name,
            served.outcome,
            served.error,
            delay,
            extra={"gateway": name},
        )
        live.publish_transition(
            rt.redis,
            rt.keys,
            name,
            f"probe {served.outcome}",
            next_probe_at=now + timedelta(seconds=delay),
            error=served.error,
        )
    return served


def _still_open(rt: Runtime, gateway_id: int) -> StoredGateway | None:
    """The gateway while its breaker is open, else None."""
    with rt.sessions() as session:
        row = session.get(GatewayRow, gateway_id)
        if row is None or row.enabled or not row.polling or row.probe_delay_s is None:
            return None
        [stored] = load_gateways_by_id(session, [gateway_id])
        return stored


def _close(rt: Runtime, gateway_id: int, now: datetime) -> bool:
    """Enable the gateway again if its breaker is still open (the operator may have
    acted meanwhile). Its time disabled is a pause: `polling_since` moves to now."""
    with rt.sessions() as session, session.begin():
        done = session.execute(
            update(_table)  # type: ignore[arg-type]
            .where(_table.c.id == gateway_id, *_OPEN[:3])
            .values(
                enabled=True,
                disabled_reason=None,
                consecutive_failures=0,
                next_probe_at=None,
                probe_delay_s=None,
                polling_since=now,
            )
            .returning(_table.c.id)
        ).first()
        return done is not None


def _back_off(rt: Runtime, gateway_id: int, now: datetime, failed: bool) -> float | None:
    """The next probe: after twice the delay when the probe failed, after the same delay
    when it could not run (endpoint busy). Returns the delay, None if the breaker closed."""
    s = rt.settings
    with rt.sessions() as session, session.begin():
        row = session.get(GatewayRow, gateway_id, with_for_update=True)
        if row is None or row.enabled or row.probe_delay_s is None:
            return None
        delay = row.probe_delay_s or s.recovery_first
        if failed:
            delay = min(max(2 * delay, s.recovery_first), s.recovery_max)
        session.execute(
            update(_table)  # type: ignore[arg-type]
            .where(_table.c.id == gateway_id)
            .values(
                probe_delay_s=delay,
                next_probe_at=now + timedelta(seconds=delay),
                updated_at=_table.c.updated_at,  # state, not configuration: no reload
            )
        )
        return delay
