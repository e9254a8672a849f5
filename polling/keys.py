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

    def claim(self, gateway_id: int, slot_ms: int) -> str:
        """Set-if-absent marker: this slot's poll has been taken by one task."""
        return f"{self.prefix}:claim:{gateway_id}:{slot_ms}"

    def endpoint_lock(self, host: str, port: int) -> str:
        """Held around every Modbus exchange with one TCP endpoint."""
        return f"{self.prefix}:lock:{host}:{port}"

    @property
    def beat_lock(self) -> str:
        return f"{self.prefix}:beat"

    @property
    def reconcile_lock(self) -> str:
        return f"{self.prefix}:reconcile"
