"""The setup a user writes first: one beat entry per gateway calling a task that connects,
reads and inserts; no locks, tokens or slot accounting. Rows have kind 'naive' and the
poll's start as their slot.

    BENCH_GATEWAYS=file BENCH_DATABASE_URL=url BENCH_BROKER=redis://... \
        celery -A bench.naive worker | beat
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from functools import cache

from celery import Celery
from pymodbus.client import ModbusTcpClient
from sqlalchemy import select

from bench.fleet import requests_of
from polling.codec import decode_answers
from polling.db import insert_ignoring_conflicts, make_engine, session_factory
from polling.gatewayfile import load_gateways
from polling.gateways import Gateway
from polling.models import GatewayRow, PollLog, Reading
from polling.records import reading_row
from polling.schedule import dt_to_ms

KIND = "naive"
GATEWAYS = os.environ.get("BENCH_GATEWAYS", "")

app = Celery("naive", broker=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/13"))
app.conf.update(
    task_ignore_result=True,
    beat_schedule={
        f"poll-{g.name}": {"task": "naive.poll", "schedule": g.interval, "args": (g.name,)}
        for g in (load_gateways(GATEWAYS, max_interval=None) if GATEWAYS else [])
    },
)


@cache
def _world() -> tuple:
    engine = make_engine(os.environ["BENCH_DATABASE_URL"])
    sessions = session_factory(engine)
    gateways = {g.name: g for g in load_gateways(GATEWAYS, max_interval=None)}
    with sessions() as session:
        ids: dict[str, int] = {
            n: i for n, i in session.execute(select(GatewayRow.name, GatewayRow.id))
        }
    return sessions, gateways, ids


@app.task(name="naive.poll")
def poll(name: str) -> None:
    sessions, gateways, ids = _world()
    gateway: Gateway = gateways[name]
    requests = requests_of(gateway)
    started = datetime.now(UTC)
    client = ModbusTcpClient(gateway.host, port=gateway.port, timeout=gateway.timeout)
    client.connect()
    try:
        answers = [
            client.read_holding_registers(r.address, count=r.count, device_id=r.device_id).registers
            if r.register == "holding"
            else client.read_input_registers(
                r.address, count=r.count, device_id=r.device_id
            ).registers
            for r in requests
        ]
    finally:
        client.close()
    values = decode_answers(requests, answers)
    finished = datetime.now(UTC)
    slot = dt_to_ms(started)
    with sessions() as session, session.begin():
        insert_ignoring_conflicts(
            session,
            PollLog.__table__,
            [
                {
                    "gateway_id": ids[name],
                    "slot_at": started,
                    "kind": KIND,
                    "outcome": "ok",
                    "started_at": started,
                    "finished_at": finished,
                    "duration_ms": (finished - started).total_seconds() * 1000,
                    "error": None,
                }
            ],
        )
        insert_ignoring_conflicts(
            session,
            Reading.__table__,
            [reading_row(ids[name], p, v, slot, KIND, finished) for p, v in values],
        )
