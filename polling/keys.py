"""The Redis key layout, in one place so tasks, reconcile and audit agree on it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "pollctl"

    def chain(self, gateway_id: int) -> str:
        """Hash of a gateway's live chain: token, due (next slot, ms), last (ms)."""
        return f"{self.prefix}:chain:{gateway_id}"

    @property
    def chains_pattern(self) -> str:
        return f"{self.prefix}:chain:*"

    def chain_gateway(self, key: str) -> int:
        """The gateway id of a chain key."""
        return int(key.rsplit(":", 1)[1])

    def claim(self, gateway_id: int, slot_ms: int) -> str:
        """Set-if-absent marker: this slot's poll has been taken by one task."""
        return f"{self.prefix}:claim:{gateway_id}:{slot_ms}"

    def claim_slot(self, key: str) -> tuple[int, int]:
        """(gateway id, slot ms) of a claim key."""
        gateway_id, slot_ms = key.removeprefix(f"{self.prefix}:claim:").split(":", 1)
        return int(gateway_id), int(slot_ms)

    def live(self, topic: str) -> str:
        """Pub/sub channel of the live feed (`/ws`): `gateways.NAME`, `global` or `alerts`."""
        return f"{self.prefix}:live:{topic}"

    def endpoint_lock(self, host: str, port: int) -> str:
        """Held around every Modbus exchange with one TCP endpoint."""
        return f"{self.prefix}:lock:{host}:{port}"

    def lock_endpoint(self, key: str) -> str:
        """`host:port` of an endpoint lock key."""
        return key.removeprefix(f"{self.prefix}:lock:")

    @property
    def locks_pattern(self) -> str:
        return f"{self.prefix}:lock:*"

    @property
    def claims_pattern(self) -> str:
        return f"{self.prefix}:claim:*"

    @property
    def beat_lock(self) -> str:
        return f"{self.prefix}:beat"

    def worker(self, hostname: str) -> str:
        """Heartbeat of a worker: what it consumes, its code version and configuration."""
        return f"{self.prefix}:worker:{hostname}"

    @property
    def workers_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    def beat(self, token: str) -> str:
        """Heartbeat of a beat process, active or standing by."""
        return f"{self.prefix}:beats:{token}"

    @property
    def beats_pattern(self) -> str:
        return f"{self.prefix}:beats:*"

    def canary(self, nonce: str) -> str:
        """List a canary task pushes to when a polling worker has run it."""
        return f"{self.prefix}:canary:{nonce}"

    def command(self, nonce: str) -> str:
        """Who took a command sent to a worker (`worker`, or `cli` when it gave up)."""
        return f"{self.prefix}:command:{nonce}"

    def reply(self, nonce: str) -> str:
        """List a worker pushes a command's answer to."""
        return f"{self.prefix}:reply:{nonce}"

    @property
    def config_stamp(self) -> str:
        """Random value replaced on every configuration change (see configcache)."""
        return f"{self.prefix}:config:stamp"

    @property
    def config_seen(self) -> str:
        """Gateway count and newest `updated_at` reconcile last saw in the database."""
        return f"{self.prefix}:config:seen"

    @property
    def buffer(self) -> str:
        """Poll records waiting for the database, oldest first."""
        return f"{self.prefix}:buffer"

    @property
    def buffer_lost(self) -> str:
        """Hash: records dropped because the buffer was full (count, first, last)."""
        return f"{self.prefix}:buffer:lost"

    @property
    def buffer_ids(self) -> str:
        """Set: ids of the entries in the buffer, so a push retried by the client is kept once."""
        return f"{self.prefix}:buffer:ids"

    @property
    def buffer_dead(self) -> str:
        """Entries a flush could not write (each with its reason), kept for an operator."""
        return f"{self.prefix}:buffer:dead"

    @property
    def buffer_flush_lock(self) -> str:
        return f"{self.prefix}:buffer:flush"

    @property
    def epoch(self) -> str:
        """Random id and birth time (ms) of this Redis's state: written once, so a missing
        one means Redis lost everything (a restart without persistence, a failover)."""
        return f"{self.prefix}:epoch"

    @property
    def broker(self) -> str:
        """Prefix of every key kombu and Celery keep in Redis (queues, unacked messages,
        bindings, control channels): kombu's `global_keyprefix`, so installations sharing
        one Redis database never consume each other's messages."""
        return f"{self.prefix}:broker:"

    def metrics(self, name: str) -> str:
        """Hash of fleet-wide counters every worker adds to (see polling/counters.py)."""
        return f"{self.prefix}:metrics:{name}"

    @property
    def reconcile_lock(self) -> str:
        return f"{self.prefix}:reconcile"

    @property
    def alerts_lock(self) -> str:
        """Held while one process evaluates the alert rules and delivers their notices."""
        return f"{self.prefix}:alerts:lock"

    @property
    def alert_notifications(self) -> str:
        """Hash: `<channel>|<outcome>` -> notifications (see polling/alerts/delivery.py)."""
        return f"{self.prefix}:metrics:alerts"
