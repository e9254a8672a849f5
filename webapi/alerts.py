"""The alerts' routes (behind the token guard, see app.py):

GET  /api/alerts?open=1          alerts, newest first (open=1: new and acked only), each
                                 with its gateway's name when it concerns one
POST /api/alerts/{id}/ack        acknowledge one; JSON body {"note": "..."} (optional)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query, Request
from pydantic import BaseModel
from sqlalchemy import select

from polling.alerts import acknowledge
from polling.alerts.store import as_json, list_alerts
from polling.errors import AlertNotFound, AlertResolved
from polling.models import GatewayRow
from polling.runtime import Runtime

router = APIRouter()


class Ack(BaseModel):
    note: str | None = None


def _rt(request: Request) -> Runtime:
    rt: Runtime = request.app.state.rt
    return rt


@router.get("/api/alerts")
def alerts(
    request: Request,
    open_only: Annotated[bool, Query(alias="open", description="new and acked only")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict:
    with _rt(request).sessions() as session:
        rows = list_alerts(session, open_only=open_only, limit=limit)
        ids = {row.gateway_id for row in rows if row.gateway_id is not None}
        names = dict(
            session.execute(select(GatewayRow.id, GatewayRow.name).where(GatewayRow.id.in_(ids)))
            .tuples()
            .all()
        )
        # The gateway's name beside its id: the page links an alert to its gateway.
        return {
            "alerts": [{**as_json(row), "gateway": names.get(row.gateway_id or 0)} for row in rows]
        }


@router.post("/api/alerts/{alert_id}/ack")
def ack(request: Request, alert_id: int, body: Annotated[Ack | None, Body()] = None) -> dict:
    try:
        return acknowledge(_rt(request), alert_id, note=body.note if body else None, by="api")
    except AlertResolved as exc:
        raise HTTPException(409, str(exc)) from None
    except AlertNotFound as exc:
        raise HTTPException(404, str(exc)) from None
