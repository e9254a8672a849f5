"""Settings from `POLLING_*` environment variables, optionally from a `.env` file."""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .colour import ColourRules
from .durations import parse_period
from .errors import ConfigError
from .sites import DEFAULT_SITE, parse_sites
from .urls import check_database_url, check_redis_url

ENV_PREFIX = "POLLING_"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "sqlite:///pollctl.db"
#: The retention settings, one per table `pollctl cleanup` trims.
RETAIN_FIELDS = ("retain_readings", "retain_poll_log", "retain_alerts", "retain_diagnostics")


@dataclass(frozen=True)
class Settings:
    """Everything pollctl reads from its environment; times are in seconds."""

    redis_url: str = DEFAULT_REDIS_URL
    database_url: str = DEFAULT_DATABASE_URL
    #: Prefix of every Redis key pollctl owns (chains, claims, locks).
    key_prefix: str = "pollctl"
    #: How often beat runs the reconcile task.
    reconcile_seconds: float = 5.0
    #: A chain whose next slot started this long ago without a poll is restarted.
    overdue_grace: float = 10.0
    #: Consecutive failed polls after which a gateway is disabled.
    failure_threshold: int = 5
    #: A gateway the failure threshold disabled is probed after this, then after twice
    #: the delay each time a probe fails, up to `recovery_max`; 0 turns recovery off.
    recovery_first: float = 60.0
    recovery_max: float = 3600.0
    #: A gateway's colour (polling/colour.py): RED after this many intervals without a
    #: success, YELLOW after `colour_yellow_intervals` or a failure rate above the share.
    colour_red_intervals: float = 10.0
    colour_yellow_intervals: float = 2.0
    colour_yellow_failure_rate: float = 0.25
    #: Largest run of unwanted registers read to merge two requests into one.
    max_gap: int = 8
    max_registers: int = 125
    max_bits: int = 2000
    #: kombu redelivers unacknowledged messages after this; intervals must stay well below it.
    visibility_timeout: int = 7200
    #: Shortest interval accepted: below it, task start jitter is a large share of a slot.
    min_interval: float = 0.1
    #: How often the worker's timer looks for due ETA tasks (Celery's default is 1 s).
    timer_precision: float = 0.05
    #: How often beat runs the diagnostics task, which applies the safe repairs.
    diagnostics_seconds: float = 30.0
    #: Window over which the failure rate is computed.
    health_window: float = 300.0
    #: Failure rate (failed / polled, over the window) above which health is degraded...
    failure_rate_warning: float = 0.25
    #: ... and above which it is critical.
    failure_rate_critical: float = 0.5
    #: Age in seconds of the oldest message waiting in a queue: degraded above this...
    backlog_warning: float = 5.0
    #: ... critical above this.
    backlog_critical: float = 30.0
    #: Share of active gateways with an overdue or missing chain that makes health critical
    #: (any at all makes it degraded).
    overdue_critical: float = 0.1
    #: A canary task sent to the `polling` queue must come back within this.
    canary_timeout: float = 5.0
    #: Poll records kept in Redis while the database is unreachable; past it they are
    #: counted as lost.
    buffer_limit: int = 100_000
    #: Chain steps whose slots start within this window travel in one poll-batch task
    #: (each poll still starts at its own slot); 0 batches only equal slot starts.
    batch_window: float = 0.1
    #: Most chain steps in one poll-batch task, so several workers share a busy window.
    batch_size: int = 100
    #: Overload shedding (polling/shedding.py): a step whose batch began more than
    #: max(late_limit, late_share x interval) seconds after its slot is not polled but
    #: recorded as skipped, so an overloaded worker catches up instead of polling every
    #: slot late; late_limit 0 turns shedding off.
    late_limit: float = 0.25
    late_share: float = 0.1
    #: First polls a second when `pollctl start` starts stopped gateways: a first poll
    #: opens a connection, so a start of more than this times the interval is spread over
    #: gateways / rate seconds (see polling/pacing.py).
    start_rate: float = 200.0
    #: A worker freezes its long-lived objects out of Python's full collections as they
    #: settle and refreshes the freeze this often (see workers/gcfreeze.py); 0 turns it off.
    gc_refreeze_seconds: float = 600.0
    #: Largest difference (seconds) between a process's own clock and Redis's that it
    #: tolerates: past it, a worker stops consuming `polling` and reconcile refuses to run
    #: there (Celery's ETA timing uses the host's clock); validate warns from 0.5 s.
    clock_skew_max: float = 2.0
    #: Alerts (polling/alerts/): apprise URLs, comma or space separated, each a channel.
    alert_urls: str = ""
    #: An open alert is sent again after this long (seconds) unless acknowledged.
    alert_cooldown: float = 21600.0
    #: A started gateway with no successful poll for this many intervals is offline.
    alert_offline_intervals: float = 3.0
    #: Messages waiting in one queue above which it alerts (the age uses the backlog
    #: thresholds above).
    alert_queue_depth: int = 10_000
    #: Share of POLLING_BUFFER_LIMIT in use above which the buffer is near its bound.
    alert_buffer_share: float = 0.8
    #: Attempts per channel and notification, and the time (seconds) all deliveries of one
    #: run may take together: the diagnostics task never waits longer on a channel.
    alert_attempts: int = 3
    alert_timeout: float = 10.0
    #: How long `pollctl cleanup` and the daily task keep each table's rows: days (`90`)
    #: or `30d` / `12h` / `45m`; 0 keeps them forever. See polling/retention.py.
    retain_readings: str = "90d"
    retain_poll_log: str = "30d"
    #: Resolved alerts (open ones are never removed).
    retain_alerts: str = "90d"
    retain_diagnostics: str = "14d"
    #: `pollctl api` listens here (localhost: put a proxy with TLS in front to expose it).
    api_host: str = "127.0.0.1"
    api_port: int = 9470
    #: When set, every API path but /health wants `Authorization: Bearer <token>`.
    api_token: str = ""
    #: Per-gateway series on `/metrics` (polls by outcome, shed, last ok): four to six
    #: series a gateway, which a large fleet may not want in Prometheus; the fleet-wide
    #: `pollctl_fleet_*` series are there either way.
    metrics_per_gateway: bool = True
    #: The live feed (`/ws`): seconds between heartbeats to each client, and the messages
    #: queued for one client before newer ones are dropped (a slow browser loses updates,
    #: never stalls the others).
    live_heartbeat: float = 15.0
    live_queue: int = 256
    #: The sites a polling worker serves (comma-separated): it consumes their queues and
    #: no other (polling/sites.py); `default` is the `polling` queue.
    sites: str = DEFAULT_SITE
    #: Log lines: auto (JSON unless stderr is a terminal), json or text.
    log_format: str = "auto"
    #: True when POLLING_REDIS_URL was given explicitly (the demo then never embeds Redis).
    redis_url_explicit: bool = field(default=False, repr=False, compare=False)
    #: The settings file read (empty when none was), for `pollctl config`.
    env_file: str = field(default="", repr=False, compare=False)

    @property
    def colour_rules(self) -> ColourRules:
        return ColourRules(
            self.colour_red_intervals, self.colour_yellow_intervals, self.colour_yellow_failure_rate
        )

    @property
    def alert_url_list(self) -> list[str]:
        """POLLING_ALERT_URLS split on commas and whitespace: one apprise URL per channel."""
        return [url for url in re.split(r"[,\s]+", self.alert_urls) if url]

    @property
    def site_list(self) -> tuple[str, ...]:
        """POLLING_SITES as names (checked when the settings were built)."""
        return parse_sites(self.sites)

    @property
    def max_interval(self) -> float:
        """Longest interval allowed: a chain enqueues one interval ahead, so this keeps
        every ETA message well inside the broker's visibility timeout."""
        return self.visibility_timeout / 2

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = None
    ) -> Settings:
        """Build settings from `environ` (default `os.environ`), with a settings file
        (`env_file`, else see `settings_file`) filling in what the environment lacks."""
        environ = dict(os.environ if environ is None else environ)
        path = Path(env_file) if env_file is not None else settings_file(environ)
        from_file = read_env_file(path) if path else {}
        _check_names(from_file, str(path))
        _check_names(environ, "environment")
        values = {**from_file, **environ}
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if not f.init or f.name in ("redis_url_explicit", "env_file"):
                continue
            raw = values.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            kwargs[f.name] = _convert(f.name, raw, type(getattr(cls, f.name)))
        kwargs["redis_url_explicit"] = bool(values.get(f"{ENV_PREFIX}REDIS_URL"))
        kwargs["env_file"] = str(path) if path and path.is_file() else ""
        settings = cls(**kwargs)
        settings.check()
        return settings

    def check(self) -> None:
        check_redis_url("POLLING_REDIS_URL", self.redis_url, mask_url(self.redis_url))
        check_database_url("POLLING_DATABASE_URL", self.database_url, mask_url(self.database_url))
        if self.reconcile_seconds <= 0:
            raise ConfigError("POLLING_RECONCILE_SECONDS must be > 0")
        if self.failure_threshold < 1:
            raise ConfigError("POLLING_FAILURE_THRESHOLD must be >= 1")
        if not 1 <= self.max_registers <= 125:
            raise ConfigError("POLLING_MAX_REGISTERS must be between 1 and 125")
        if not 1 <= self.max_bits <= 2000:
            raise ConfigError("POLLING_MAX_BITS must be between 1 and 2000")
        if self.max_gap < 0:
            raise ConfigError("POLLING_MAX_GAP must be >= 0")
        for name in ("failure_rate_warning", "failure_rate_critical", "overdue_critical"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"POLLING_{name.upper()} must be between 0 and 1")
        if self.buffer_limit < 0:
            raise ConfigError("POLLING_BUFFER_LIMIT must be >= 0")
        if self.visibility_timeout < 10:
            raise ConfigError("POLLING_VISIBILITY_TIMEOUT must be at least 10 seconds")
        self._check_sites()
        self._check_periods()
        self._check_worker_tuning()
        self._check_shedding()

    def _check_sites(self) -> None:
        try:
            parse_sites(self.sites)
        except ValueError as exc:
            raise ConfigError(f"POLLING_SITES={self.sites!r}: {exc}") from None

    def _check_periods(self) -> None:
        # Each was taken before and misbehaved quietly: a zero diagnostics period or timer
        # precision spins beat or the worker's timer, a negative window reports "the last
        # -10 s".
        _check_positive(
            self,
            "health_window",
            "canary_timeout",
            "timer_precision",
            "diagnostics_seconds",
            "min_interval",
        )
        if self.overdue_grace < 0:
            raise ConfigError("POLLING_OVERDUE_GRACE must be >= 0")
        if not 0 <= self.backlog_warning <= self.backlog_critical:
            raise ConfigError(
                "POLLING_BACKLOG_WARNING must be >= 0 and <= POLLING_BACKLOG_CRITICAL "
                f"(they are {self.backlog_warning:g} and {self.backlog_critical:g})"
            )
        if self.failure_rate_warning > self.failure_rate_critical:
            raise ConfigError(
                "POLLING_FAILURE_RATE_WARNING must be <= POLLING_FAILURE_RATE_CRITICAL "
                f"(they are {self.failure_rate_warning:g} and {self.failure_rate_critical:g})"
            )

    def _check_worker_tuning(self) -> None:
        if self.batch_window < 0 or self.batch_window > 1:
            raise ConfigError("POLLING_BATCH_WINDOW must be between 0 and 1 second")
        if self.batch_size < 1:
            raise ConfigError("POLLING_BATCH_SIZE must be >= 1")
        _check_positive(self, "clock_skew_max", "start_rate")
        if self.log_format not in ("auto", "json", "text"):
            raise ConfigError("POLLING_LOG_FORMAT must be auto, json or text")
        if self.live_heartbeat <= 0 or self.live_queue < 1:
            raise ConfigError("POLLING_LIVE_HEARTBEAT must be > 0 and POLLING_LIVE_QUEUE >= 1")
        if not 0 < self.api_port < 65536:
            raise ConfigError("POLLING_API_PORT must be between 1 and 65535")
        if self.recovery_first < 0 or self.recovery_max < self.recovery_first:
            raise ConfigError("POLLING_RECOVERY_MAX must be >= POLLING_RECOVERY_FIRST >= 0")
        if not 0 < self.colour_yellow_intervals <= self.colour_red_intervals:
            raise ConfigError(
                "POLLING_COLOUR_YELLOW_INTERVALS must be > 0 and <= POLLING_COLOUR_RED_INTERVALS"
            )
        if self.gc_refreeze_seconds < 0:
            raise ConfigError("POLLING_GC_REFREEZE_SECONDS must be >= 0")
        self._check_alerts()

    def _check_shedding(self) -> None:
        if self.late_limit < 0:
            raise ConfigError("POLLING_LATE_LIMIT must be >= 0 (0 turns shedding off)")
        if not 0 <= self.late_share <= 1:
            raise ConfigError("POLLING_LATE_SHARE must be between 0 and 1")

    def _check_alerts(self) -> None:
        if self.alert_cooldown < 0:
            raise ConfigError("POLLING_ALERT_COOLDOWN must be >= 0")
        if self.alert_offline_intervals <= 0:
            raise ConfigError("POLLING_ALERT_OFFLINE_INTERVALS must be > 0")
        if not 0 < self.alert_buffer_share <= 1:
            raise ConfigError("POLLING_ALERT_BUFFER_SHARE must be > 0 and <= 1")
        if self.alert_attempts < 1 or self.alert_timeout <= 0:
            raise ConfigError("POLLING_ALERT_ATTEMPTS must be >= 1, POLLING_ALERT_TIMEOUT > 0")
        for name in RETAIN_FIELDS:
            parse_period(getattr(self, name), f"{ENV_PREFIX}{name.upper()}")

    def retention(self, name: str) -> timedelta | None:
        """The period of one `retain_*` setting; None keeps forever."""
        return parse_period(getattr(self, name), f"{ENV_PREFIX}{name.upper()}")

    def masked(self) -> dict[str, str]:
        """Every setting as `POLLING_NAME: value`, with passwords in URLs masked."""
        out = {}
        for f in fields(self):
            if f.name in ("redis_url_explicit", "env_file"):
                continue
            value = getattr(self, f.name)
            if f.name.endswith("_url"):
                value = mask_url(value)
            elif f.name.endswith("_token") and value:
                value = "***"
            elif f.name == "alert_urls" and value:
                # apprise URLs carry tokens and passwords anywhere in them.
                value = " ".join(f"{u.split('://', 1)[0]}://***" for u in self.alert_url_list)
            out[ENV_PREFIX + f.name.upper()] = str(value)
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.masked().items())
        return f"Settings({inner})"


def _check_names(values: Mapping[str, str], source: str) -> None:
    """Refuse a `POLLING_*` name that is no setting: a typo would otherwise leave its
    setting at the default without a word (a misspelt database URL, SQLite)."""
    known = {
        ENV_PREFIX + f.name.upper() for f in fields(Settings) if f.name != "redis_url_explicit"
    }
    for name in values:
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{source}: {name} is no setting{hint}")


def _check_positive(settings: Settings, *names: str) -> None:
    for name in names:
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be > 0")


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***`."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


#: The file the systemd units read (deploy/): an operator's `pollctl` on the server reads it too.
SYSTEM_ENV_FILE = Path("/etc/pollctl/pollctl.env")


def settings_file(environ: Mapping[str, str]) -> Path | None:
    """The file named by `POLLING_ENV_FILE` (which must exist), else `./.env`, else
    `SYSTEM_ENV_FILE`, whichever exists first; None when none does."""
    named = environ.get(f"{ENV_PREFIX}ENV_FILE")
    if named:
        path = Path(named)
        if not path.exists():
            raise ConfigError(f"{ENV_PREFIX}ENV_FILE={named}: no such file")
        if path.is_dir():
            raise ConfigError(f"{ENV_PREFIX}ENV_FILE={named}: is a directory, not a file")
        return path
    return next((p for p in (Path(".env"), SYSTEM_ENV_FILE) if p.is_file()), None)


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines of a dotenv file; comments, blanks and `export ` prefixes allowed."""
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8-sig")  # an editor's byte order mark is no name
    except PermissionError:
        raise ConfigError(
            f"{path}: permission denied (it holds passwords: run as its owner, e.g. "
            "`sudo -u pollctl pollctl ...`)"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    values = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ")
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        values[key.strip()] = value.strip().strip("'\"")
    return values


#: How a yes/no setting may be written (`bool("false")` would be true).
BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
            "0": False, "false": False, "no": False, "off": False}  # fmt: skip


def _convert(name: str, raw: str, kind: type) -> Any:
    env = ENV_PREFIX + name.upper()
    if kind is bool:
        value = BOOLEANS.get(raw.strip().lower())
        if value is None:
            raise ConfigError(f"{env}={raw!r}: expected true or false")
        return value
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{env}={raw!r}: expected {kind.__name__}") from None
    # float() takes "nan" and "inf", which pass every range check below (nan compares
    # false both ways).
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{env}={raw!r}: expected a finite number")
    return value
