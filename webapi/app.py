"""The FastAPI application: routes, the bearer token, and the one Runtime it reads through.

    GET /health                       liveness of this process (never touches Redis or SQL)
    GET /api/polling/health           per component, from the newest diagnostics run;
                                      200 healthy or degraded, 503 critical
    GET /api/polling/diagnostics      the newest runs: what each found and repaired
    GET /api/polling/queue-status     queues, consumers, unacked messages, chains, workers
    GET /api/polling/gateways         every gateway's status, colour, last ok, success rate;
                                      with ?colour=&q=&offset=&limit= a page of the status
                                      page's tiles (see polling/fleetview.py)
    GET /api/polling/gateways/{name}  one gateway, with its newest readings, its points'
                                      values and sparklines, poll log and missed slots
    GET /api/alerts?open=1            alerts (see webapi/alerts.py)
    POST /api/alerts/{id}/ack         acknowledge one, JSON body {"note": ...}
    GET /metrics                      Prometheus exposition (see api/metrics.py)
    GET /                             the status page (static files in webapi/static/)
    WS  /ws                           the live feed (webapi/ws.py, webapi/live.py)

Handlers are plain functions (FastAPI runs them in its thread pool): every read is a
blocking Redis or SQL call, and none waits on a worker.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy.exc import DBAPIError

from polling import fleetview
from polling.colour import Colour
from polling.runtime import Runtime
from polling.settings import Settings, mask_url
from workers.control import broker_view

from . import alerts, views, ws
from .live import LiveHub
from .metrics import FleetCollector

STATIC = Path(__file__).parent / "static"
#: What the status page may ask for by colour.
COLOURS = ("", *(c.value for c in Colour))


def create_api(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    """The app for `settings`; `runtime` is built on startup unless given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or Runtime.build(settings)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FleetCollector(rt, broker_view(rt)))
        app.state.rt, app.state.registry = rt, registry
        app.state.judged = fleetview.JudgedCache()
        app.state.live = LiveHub(rt.settings.redis_url, rt.keys, rt.settings.live_queue)
        app.state.live.start()
        try:
            yield
        finally:
            await app.state.live.close()
            if runtime is None:
                rt.close()

    app = FastAPI(title="pollctl", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.token = settings.api_token
    app.add_exception_handler(redis.RedisError, _unavailable)
    app.add_exception_handler(DBAPIError, _unavailable)
    app.include_router(public)
    app.include_router(guarded)
    app.include_router(alerts.router, dependencies=[Depends(require_token)])
    app.include_router(ws.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def require_token(request: Request) -> None:
    """With POLLING_API_TOKEN set, every guarded path wants `Authorization: Bearer <token>`."""
    token: str = request.app.state.token
    if not token:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), token):
        raise HTTPException(
            401,
            "a bearer token is required (POLLING_API_TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )


public = APIRouter()
guarded = APIRouter(dependencies=[Depends(require_token)])


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Redis or the database is down: a monitor gets a 503 saying which, not a 500."""
    rt = _rt(request)
    which = "redis" if isinstance(exc, redis.RedisError) else "database"
    url = rt.settings.redis_url if which == "redis" else rt.settings.database_url
    cause = getattr(exc, "orig", None) or exc
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    body = {
        "health": "critical",
        "error": f"{which} {mask_url(url)} is unreachable: {reason}",
    }
    return JSONResponse(body, status_code=503)


def _rt(request: Request) -> Runtime:
    rt: Runtime = request.app.state.rt
    return rt


@public.get("/", include_in_schema=False)
def status_page() -> FileResponse:
    """The page holds no data: its script asks the guarded API (with the token, if set)."""
    return FileResponse(STATIC / "index.html")


@public.get("/health")
def liveness() -> dict[str, str]:
    return {"status": "ok"}


@guarded.get("/api/polling/health")
def fleet_health(request: Request) -> JSONResponse:
    rt = _rt(request)
    health = views.health(rt)
    code = 503 if health.health == "critical" else 200
    return JSONResponse(health.as_json(views.now_utc(rt)), status_code=code)


@guarded.get("/api/polling/diagnostics")
def diagnostics(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 20) -> dict:
    return views.diagnostics_runs(_rt(request), limit)


@guarded.get("/api/polling/queue-status")
def queue_status(request: Request) -> dict:
    rt = _rt(request)
    return views.queue_status(rt, broker_view(rt))


@guarded.get("/api/polling/gateways")
def gateways(
    request: Request,
    colour: Annotated[str | None, Query()] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    offset: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int | None, Query(ge=1, le=500)] = None,
) -> dict:
    """Without parameters every gateway's status; with any, a page of tiles."""
    if colour is None and q is None and offset is None and limit is None:
        return {"gateways": views.gateways(_rt(request))}
    if (colour or "") not in COLOURS:
        raise HTTPException(422, f"colour {colour!r}: one of {', '.join(COLOURS[1:])}")
    judged = request.app.state.judged
    return views.tiles(_rt(request), judged, colour or "", q or "", offset or 0, limit or 100)


@guarded.get("/api/polling/gateways/{name:path}")  # a name may hold a "/"
def gateway(request: Request, name: str) -> dict:
    rt = _rt(request)
    found = views.gateways(rt, name)
    detail = views.gateway_detail(rt, name) if found else None
    if not found or detail is None:
        raise HTTPException(404, f"no gateway named {name!r}")
    # The status fields as they always were; the page's fields beside them.
    return {**detail, **found[0], "readings": views.latest_readings(rt, name)}


@guarded.get("/metrics")
def metrics(request: Request) -> Response:
    body = generate_latest(request.app.state.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
