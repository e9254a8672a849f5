"""The floor: one asyncio process polling the fleet with pymodbus directly, on the same slot
grid, writing the same rows (kind 'floor') in batches the way pollctl writes them (one INSERT over
arrays, COPY for readings); no queue, no locks, no tokens.

    python -m bench.floor GATEWAYS_FILE DATABASE_URL UNTIL_EPOCH_S
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime

from pymodbus.client import AsyncModbusTcpClient
from sqlalchemy import select

from bench.fleet import requests_of
from polling import pgwrite
from polling.codec import decode_answers
from polling.db import insert_ignoring_conflicts, make_engine, session_factory
from polling.gatewayfile import load_gateways
from polling.gateways import Gateway
from polling.modbus import READERS
from polling.models import GatewayRow, PollLog, Reading
from polling.records import reading_row
from polling.schedule import Grid, ms_to_dt

KIND = "floor"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def poll_forever(gateway: Gateway, gateway_id: int, until_ms: int, polls: list, reads: list):
    requests = requests_of(gateway)
    grid = Grid.for_gateway(gateway.name, gateway.interval)
    client = AsyncModbusTcpClient(
        gateway.host, port=gateway.port, timeout=gateway.timeout, retries=0
    )
    slot = grid.starting(now_ms())
    while slot < until_ms:
        await asyncio.sleep(max(0.0, (slot - now_ms()) / 1000))
        started = datetime.now(UTC)
        outcome, values = "ok", []
        try:
            if not client.connected:
                await client.connect()
            answers = []
            for r in requests:
                reply = await getattr(client, READERS[r.register])(
                    r.address, count=r.count, device_id=r.device_id
                )
                answers.append(
                    reply.bits[: r.count] if r.register in ("coil", "discrete") else reply.registers
                )
            values = decode_answers(requests, answers)
        except Exception:
            outcome = "failed"
        finished = datetime.now(UTC)
        polls.append(
            {
                "gateway_id": gateway_id,
                "slot_at": ms_to_dt(slot),
                "kind": KIND,
                "outcome": outcome,
                "started_at": started,
                "finished_at": finished,
                "duration_ms": (finished - started).total_seconds() * 1000,
                "error": None,
            }
        )
        reads.extend(reading_row(gateway_id, p, v, slot, KIND, finished) for p, v in values)
        slot = grid.following(slot, now_ms())
    client.close()


async def main(path: str, url: str, until_s: float) -> None:
    engine = make_engine(url)
    sessions = session_factory(engine)
    gateways = load_gateways(path, max_interval=None)
    with sessions() as session:
        ids: dict[str, int] = {
            n: i for n, i in session.execute(select(GatewayRow.name, GatewayRow.id))
        }
    polls: list[dict] = []
    reads: list[dict] = []

    def flush() -> None:
        batch, polls[:] = list(polls), []
        rows, reads[:] = list(reads), []
        with sessions() as session, session.begin():
            if pgwrite.is_postgresql(session):  # the same write path as pollctl's
                pgwrite.insert_polls(session, batch)
                pgwrite.copy_readings(session, rows)
            else:
                insert_ignoring_conflicts(session, PollLog.__table__, batch)
                insert_ignoring_conflicts(session, Reading.__table__, rows)

    until_ms = round(until_s * 1000)
    tasks = [
        asyncio.create_task(poll_forever(g, ids[g.name], until_ms, polls, reads)) for g in gateways
    ]
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.2)
        await asyncio.to_thread(flush)
    flush()
    engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
