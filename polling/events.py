"""A gateway's state transitions (disabled by failures, probe failed, recovered) on the
live feed (`Keys.live`): best effort, so the feed never costs the transition."""

from __future__ import annotations

import json
import logging
from datetime import datetime

from .runtime import Runtime
from .timefmt import iso_z

log = logging.getLogger(__name__)


def publish_transition(
    rt: Runtime,
    gateway: str,
    event: str,
    *,
    next_probe_at: datetime | None = None,
    error: str | None = None,
) -> None:
    """To `global` and `gateways.NAME`, one round trip."""
    message = json.dumps(
        {
            "event": event,
            "gateway": gateway,
            "next_probe_at": iso_z(next_probe_at),
            "error": error,
        }
    )
    try:
        pipe = rt.redis.pipeline(transaction=False)
        pipe.publish(rt.keys.live("global"), message)
        pipe.publish(rt.keys.live(f"gateways.{gateway}"), message)
        pipe.execute()
    except Exception as exc:  # the live feed is best effort
        log.debug("transition of %s not published: %s", gateway, exc)
