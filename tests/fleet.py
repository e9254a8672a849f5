"""Gateway documents shared by the integration and end-to-end tests."""

from __future__ import annotations

ALL_TYPES = [
    {"name": "temp", "address": 0, "type": "float32", "unit": "°C"},
    {"name": "temp_swapped", "address": 2, "type": "float32", "order": "CDAB"},
    {
        "name": "power",
        "register": "input",
        "address": 0,
        "type": "int32",
        "order": "DCBA",
        "scale": 0.5,
        "offset": 10,
    },
    {"name": "energy", "register": "input", "address": 4, "type": "uint64", "order": "BADC"},
    {"name": "counter", "address": 10, "type": "uint32"},
    {"name": "delta", "address": 12, "type": "int16", "scale": 0.1},
    {"name": "status", "address": 13, "type": "uint16"},
    {"name": "offset_big", "address": 14, "type": "int64"},
    {"name": "precise", "address": 20, "type": "float64"},
    {"name": "label", "address": 40, "type": "string", "count": 4},
    {"name": "running", "register": "coil", "address": 5},
    {"name": "alarm", "register": "discrete", "address": 9},
    {"name": "sub_device", "address": 0, "type": "uint16", "device_id": 2},
]


def fleet(ports: list[int], intervals: list[float], points: list[dict] | None = None) -> dict:
    """One gateway per port, named gw0, gw1, ... with the given intervals."""
    return {
        "gateways": [
            {
                "name": f"gw{i}",
                "host": "127.0.0.1",
                "port": port,
                "interval": interval,
                "timeout": min(1.0, interval),
                "points": [dict(p) for p in (points or ALL_TYPES)],
            }
            for i, (port, interval) in enumerate(zip(ports, intervals, strict=True))
        ]
    }
