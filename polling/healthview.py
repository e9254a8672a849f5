"""The health an outside monitor is told: per component, from the newest diagnostics run
beat recorded (never a live check that could hang a probe), and whether that run is
recent enough to believe."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from .timefmt import iso_z

Health = Literal["healthy", "degraded", "critical"]
#: A check's status as an outside monitor's health.
HEALTH_OF: dict[str, Health] = {"healthy": "healthy", "warning": "degraded", "error": "critical"}
RANK: dict[str, int] = {"healthy": 0, "degraded": 1, "critical": 2}
#: A run older than this many diagnostics periods (and a minute) means beat stopped them.
STALE_PERIODS = 3


@dataclass(frozen=True)
class ComponentHealth:
    health: Health
    message: str


@dataclass(frozen=True)
class FleetHealth:
    health: Health
    components: dict[str, ComponentHealth]
    ran_at: datetime | None

    def as_json(self, now: datetime) -> dict:
        return {
            "health": self.health,
            "ran_at": iso_z(self.ran_at),
            "age_s": round((now - self.ran_at).total_seconds(), 1) if self.ran_at else None,
            "components": {
                name: {"health": c.health, "message": c.message}
                for name, c in self.components.items()
            },
        }


def fleet_health(
    checks: dict[str, dict] | None, ran_at: datetime | None, now: datetime, period_s: float
) -> FleetHealth:
    """`checks` (component -> {"status", "message"}) of the newest run at `ran_at`, or None
    when no run was recorded; beat runs them every `period_s`."""
    components: dict[str, ComponentHealth] = {}
    for name, check in (checks or {}).items():
        health = HEALTH_OF.get(str(check.get("status")), "critical")
        components[name] = ComponentHealth(health, str(check.get("message", "")))
    components["diagnostics"] = _freshness(ran_at, now, period_s)
    worst = max((c.health for c in components.values()), key=RANK.__getitem__)
    return FleetHealth(worst, components, ran_at)


def _freshness(ran_at: datetime | None, now: datetime, period_s: float) -> ComponentHealth:
    if ran_at is None:
        return ComponentHealth(
            "critical", "no diagnostics run recorded: is beat running? (pollctl validate)"
        )
    age = (now - ran_at).total_seconds()
    bound = max(STALE_PERIODS * period_s, 60.0)
    if age > bound:
        return ComponentHealth(
            "critical",
            f"the newest diagnostics run is {age:.0f} s old (beat runs one every {period_s:g} s): "
            "beat is not running them, so nothing here is current",
        )
    return ComponentHealth("healthy", f"diagnostics ran {age:.0f} s ago")
