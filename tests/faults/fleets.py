"""Gateway documents for the fault suite: small register maps in two requests."""

from __future__ import annotations

from typing import Any

POINTS: list[dict[str, Any]] = [
    {"name": "status", "address": 0, "type": "uint16"},
    {"name": "temp", "address": 1, "type": "float32"},
    {"name": "power", "register": "input", "address": 0, "type": "int32", "scale": 0.1},
]


def document(ports: list[int], interval: float = 1.0, timeout: float = 0.5, **extra) -> dict:
    return {
        "gateways": [
            {
                "name": f"gw{i}",
                "host": "127.0.0.1",
                "port": port,
                "interval": interval,
                "timeout": timeout,
                "points": [dict(p) for p in POINTS],
                **extra,
            }
            for i, port in enumerate(ports)
        ]
    }
