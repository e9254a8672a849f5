"""The benchmark fleet: N gateways of 10 points in 3 requests, one simulated device each."""

from __future__ import annotations

from typing import Any

from polling.gateways import Gateway
from polling.plan import Request, full_plan
from polling.settings import Settings

POINTS: list[dict[str, Any]] = [
    {"name": "v_l1", "address": 0, "type": "float32"},
    {"name": "v_l2", "address": 2, "type": "float32"},
    {"name": "status", "address": 4, "type": "uint16"},
    {"name": "alarms", "address": 5, "type": "uint16"},
    {"name": "power", "address": 6, "type": "int32", "scale": 0.1},
    {"name": "energy", "address": 100, "type": "uint32", "scale": 0.01},
    {"name": "mode", "address": 102, "type": "uint16"},
    {"name": "setpoint", "address": 103, "type": "uint16"},
    {"name": "flow", "register": "input", "address": 0, "type": "int32"},
    {"name": "temp", "register": "input", "address": 2, "type": "float32"},
]


def fleet(ports: list[int], interval: float, timeout: float) -> dict[str, Any]:
    return {
        "gateways": [
            {
                "name": f"b{i:05d}",
                "host": "127.0.0.1",
                "port": port,
                "interval": interval,
                "timeout": timeout,
                "points": [dict(p) for p in POINTS],
            }
            for i, port in enumerate(ports)
        ]
    }


def requests_of(gateway: Gateway) -> list[Request]:
    """The requests pollctl would send, with its default settings (for naive and floor)."""
    return full_plan(gateway, Settings())
