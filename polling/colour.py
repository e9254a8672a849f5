"""A gateway's colour: the one judgement of its state that the CLI, the API and the
status page all show, so they never disagree."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from .models import GatewayRow


class Colour(StrEnum):
    GREY = "grey"  # stopped, or disabled by the operator: nobody expects polls
    RED = "red"  # disabled by failures, long without a success, or a critical alert open
    YELLOW = "yellow"  # late successes or many failures
    GREEN = "green"


@dataclass(frozen=True)
class ColourRules:
    """Thresholds (settings `POLLING_COLOUR_*`)."""

    #: No success for this many intervals: RED.
    red_intervals: float = 10.0
    #: Last success this many intervals old: YELLOW.
    yellow_intervals: float = 2.0
    #: Failed share of the recent polls above this: YELLOW.
    yellow_failure_rate: float = 0.25


@dataclass(frozen=True)
class GatewayState:
    """What the colour is judged on (see `colour_of`)."""

    #: Started (`pollctl start`) and not stopped.
    polling: bool
    #: False when disabled, by the operator or by failures.
    enabled: bool
    #: Disabled by its failure threshold (and probed for recovery), not by the operator.
    disabled_by_failures: bool
    interval_s: float
    last_ok_at: datetime | None
    #: Since when it has been polling (a fresh start is not judged offline at once).
    polling_since: datetime | None
    #: failed / polled over the recent window; None when nothing was polled in it.
    failure_rate: float | None = None
    critical_alert: bool = False


def state_of(
    row: GatewayRow, failure_rate: float | None = None, critical_alert: bool = False
) -> GatewayState:
    """The state of a stored gateway. The failure threshold marks a gateway it disabled
    with a probe delay (recovery's breaker, set even when recovery is off); the operator's
    `enabled: false` and `pollctl stop` clear it."""
    return GatewayState(
        polling=row.polling,
        enabled=row.enabled,
        disabled_by_failures=not row.enabled and row.probe_delay_s is not None,
        interval_s=row.interval_s,
        last_ok_at=row.last_ok_at,
        polling_since=row.polling_since,
        failure_rate=failure_rate,
        critical_alert=critical_alert,
    )


def colour_of(state: GatewayState, now: datetime, rules: ColourRules | None = None) -> Colour:
    rules = rules or ColourRules()
    if not state.polling:
        return Colour.GREY
    if state.disabled_by_failures or state.critical_alert:
        return Colour.RED
    if not state.enabled:
        return Colour.GREY
    since = _newest(state.last_ok_at, state.polling_since)
    age = (now - since).total_seconds() / state.interval_s if since else 0.0
    if age >= rules.red_intervals:
        return Colour.RED
    if age >= rules.yellow_intervals or (state.failure_rate or 0.0) > rules.yellow_failure_rate:
        return Colour.YELLOW
    return Colour.GREEN


def _newest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None
