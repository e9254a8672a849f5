"""The `alerts` table: reading alerts, acknowledging one, and which gateways have an open
critical alert (the colour rule's input)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import AlertNotFound, AlertResolved
from ..models import AlertRow
from ..timefmt import iso_z

NEW, ACKED, RESOLVED = "new", "acked", "resolved"
OPEN_STATES = (NEW, ACKED)


def as_json(row: AlertRow) -> dict:
    return {
        "id": row.id,
        "rule": row.rule,
        "subject": row.subject,
        "gateway_id": row.gateway_id,
        "severity": row.severity,
        "state": row.state,
        "message": row.message,
        "first_at": iso_z(row.first_at),
        "last_at": iso_z(row.last_at),
        "notified_at": iso_z(row.notified_at),
        "resolved_at": iso_z(row.resolved_at),
        "acked_at": iso_z(row.acked_at),
        "ack_note": row.ack_note,
        "ack_by": row.ack_by,
    }


def open_alerts(session: Session) -> list[AlertRow]:
    query = select(AlertRow).where(AlertRow.state.in_(OPEN_STATES)).order_by(AlertRow.id)
    return list(session.scalars(query))


def list_alerts(session: Session, *, open_only: bool = False, limit: int = 200) -> list[AlertRow]:
    """Newest first: the open ones, or every alert (resolved ones are the history)."""
    query = select(AlertRow).order_by(AlertRow.id.desc()).limit(limit)
    if open_only:
        query = query.where(AlertRow.state.in_(OPEN_STATES))
    return list(session.scalars(query))


def ack(session: Session, alert_id: int, *, now: datetime, note: str | None, by: str) -> AlertRow:
    """Acknowledge an open alert: it stays open (and resolves as usual) but is not sent
    again. Acknowledging an acked alert again replaces its note."""
    row = session.get(AlertRow, alert_id)
    if row is None:
        raise AlertNotFound(f"alert {alert_id}: no such alert")
    if row.state == RESOLVED:
        raise AlertResolved(f"alert {alert_id}: already resolved, nothing to acknowledge")
    row.state, row.acked_at, row.ack_note, row.ack_by = ACKED, now, note, by
    return row


def open_critical_gateways(session: Session) -> set[int]:
    """Ids of gateways with an open critical alert (colour RED)."""
    query = select(AlertRow.gateway_id).where(
        AlertRow.state.in_(OPEN_STATES),
        AlertRow.severity == "critical",
        AlertRow.gateway_id.is_not(None),
    )
    return {gateway_id for gateway_id in session.scalars(query) if gateway_id is not None}
