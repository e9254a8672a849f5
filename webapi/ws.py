"""`/ws`: the live feed's WebSocket (protocol in webapi/live.py).

With POLLING_API_TOKEN set, the handshake carries the token one of three ways, since a
browser cannot set headers on a WebSocket: `Authorization: Bearer TOKEN`, a
`Sec-WebSocket-Protocol` offer of `bearer.TOKEN` (the page's way: it stays out of access
logs; offer `pollctl` beside it and the server selects that), or `?token=TOKEN`. A wrong or
missing token closes the handshake with 1008 (policy violation) before it is accepted,
which the client sees as an HTTP 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from datetime import UTC, datetime

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from polling.timefmt import iso_z

from .live import BadRequest, Client, LiveHub, check_topic

router = APIRouter()

#: The subprotocol the server selects when a client offers it.
SUBPROTOCOL = "pollctl"


def offered_token(websocket: WebSocket) -> str | None:
    scheme, _, value = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for protocol in websocket.scope.get("subprotocols", []):
        if protocol.startswith("bearer."):
            return str(protocol.removeprefix("bearer."))
    return websocket.query_params.get("token")


@router.websocket("/ws")
async def live_socket(websocket: WebSocket) -> None:
    token: str = websocket.app.state.token
    if token:
        given = offered_token(websocket)
        if given is None or not hmac.compare_digest(given, token):
            await websocket.close(code=1008, reason="a bearer token is required")
            return
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    hub: LiveHub = websocket.app.state.live
    heartbeat: float = websocket.app.state.rt.settings.live_heartbeat
    client = hub.connect()
    sender = asyncio.create_task(_send(websocket, client, heartbeat))
    try:
        while True:
            client.offer(_handle(hub, client, await websocket.receive_text()))
    except WebSocketDisconnect:
        pass
    finally:
        hub.disconnect(client)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


def _handle(hub: LiveHub, client: Client, text: str) -> str:
    """The reply to one client message."""
    try:
        message = json.loads(text)
        if not isinstance(message, dict) or message.get("op") not in ("subscribe", "unsubscribe"):
            raise BadRequest('expected {"op": "subscribe" or "unsubscribe", "topics": [...]}')
        topics = message.get("topics")
        if not isinstance(topics, list):
            raise BadRequest('"topics" must be a list')
        checked = [check_topic(t) for t in topics]
        if message["op"] == "subscribe":
            hub.subscribe(client, checked)
        else:
            hub.unsubscribe(client, checked)
    except (json.JSONDecodeError, BadRequest) as exc:
        return json.dumps({"op": "error", "error": str(exc)})
    return json.dumps({"op": "subscribed", "topics": sorted(client.topics)})


async def _send(websocket: WebSocket, client: Client, heartbeat: float) -> None:
    """The one task that writes to this socket: queued frames, and a heartbeat whenever
    `heartbeat` seconds pass (whatever else was sent meanwhile)."""
    loop = asyncio.get_running_loop()
    due = loop.time() + heartbeat
    while True:
        try:
            frame = await asyncio.wait_for(client.queue.get(), max(0.0, due - loop.time()))
        except TimeoutError:
            due = loop.time() + heartbeat
            now = iso_z(datetime.now(UTC))
            frame = json.dumps({"op": "heartbeat", "at": now, "dropped": client.dropped})
        await websocket.send_text(frame)
