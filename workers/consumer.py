"""The worker's consumer, with the broker tried again at most `RETRY_MAX_S` after each
failed try.

Celery's consumer reconnects through kombu's `ensure_connection` with its defaults: pauses
of 2, 4, 6, ... s up to 30 s. So after a Redis outage the consumer came back up to 30 s
after Redis did (7 s after a 35 s outage; the fault row `3b`), while every slot of the
wait is missed. A refused connect on a loopback or LAN broker costs nothing, so pollctl
tries every 1 to 2 s.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery.worker.consumer import Consumer
from kombu import Connection

RETRY_MAX_S = 2.0


class PromptConsumer(Consumer):  # type: ignore[misc]
    def ensure_connected(self, conn: Connection) -> Any:
        # Celery passes (errback, max_retries, callback=) and leaves the pauses to kombu.
        conn.ensure_connection = partial(  # type: ignore[method-assign]
            conn.ensure_connection,
            interval_start=0,
            interval_step=1,
            interval_max=RETRY_MAX_S,
        )
        return super().ensure_connected(conn)
