"""Alerts: rules over the fleet's state (`rules`, fed by `inputs`), kept in the database
with a lifecycle (`store`, `lifecycle`) and delivered through apprise (`delivery`)."""

from .lifecycle import acknowledge, run
from .store import open_critical_gateways

__all__ = ["acknowledge", "open_critical_gateways", "run"]
