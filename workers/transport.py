"""kombu's Redis transport, with two crashes on connection loss taken out.

When the broker connection drops, kombu 5.7 closes the channel, and two things then reach
for the connection it has just torn down (`AttributeError` in `_connparams`), after which
Celery stops the worker with "Unrecoverable error" (the fault suite's Redis restart shows
both):

- the channel's close pushes unacknowledged messages (every ETA poll is one) back to
  their queues;
- a task that was running (a threads pool cannot cancel it) finishes and acknowledges its
  message on the old channel.

Here both are skipped with a warning. The messages stay in kombu's `unacked` hash, which
workers sweep after the visibility timeout, and die stale then: reconcile has replaced
their chains long before. On a healthy connection (a warm shutdown) nothing changes.

`install` puts it behind kombu's `redis` alias, so the broker URL stays `redis://...`.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from kombu import transport as kombu_transport
from kombu.transport import redis

log = logging.getLogger(__name__)


class QoS(redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)
        except (AttributeError, *self.channel.connection_errors) as exc:
            # kombu declares _delivered None on the class and fills it in __init__
            delivered = cast("dict[Any, Any]", self._delivered)
            log.warning(
                "%d unacknowledged messages left for the visibility-timeout sweep: the "
                "broker connection is gone (%s)",
                len(delivered),
                exc,
            )
            delivered.clear()

    def ack(self, delivery_tag: Any) -> None:
        try:
            super().ack(delivery_tag)
        except (AttributeError, *self.channel.connection_errors) as exc:
            log.warning(
                "message %s not acknowledged: its connection is gone (%s)", delivery_tag, exc
            )

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except (AttributeError, *self.channel.connection_errors) as exc:
            log.warning("message %s not rejected: its connection is gone (%s)", delivery_tag, exc)


class Channel(redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel


def install() -> None:
    """Make `redis://` and `rediss://` broker URLs use this transport in this process.

    Named under kombu's own alias rather than by Celery's `broker_transport` setting: a
    transport named by its class path becomes the scheme of the connection's URL
    (`workers.transport:Transport://...`), and Flower picks its broker client from that
    scheme, so `/broker` and `/api/queues/length` answered "'redis' broker is not
    supported" (flower/utils/broker.py, `Broker.__new__`)."""
    for scheme in ("redis", "rediss"):
        kombu_transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
        # kombu caches the class per alias: a connection made earlier in this process may
        # have resolved kombu's own already.
        kombu_transport._transport_cache.pop(scheme, None)
