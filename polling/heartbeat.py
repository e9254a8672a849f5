"""Heartbeats of workers and beats in Redis: who is alive, what it consumes, and with which
code and configuration, so diagnostics and audit never have to ask Celery."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import asdict, dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from redis import Redis

from .keys import Keys
from .settings import Settings
from .sites import DEFAULT_SITE

#: Written this often; a heartbeat missing three periods in a row is a dead process.
PERIOD_SECONDS = 5.0
TTL_MS = 3 * int(PERIOD_SECONDS * 1000)

#: Settings that change what or how a worker polls: workers that disagree on them can
#: poll the same gateway twice or write to another database.
SHARED_SETTINGS = (
    "redis_url",
    "database_url",
    "key_prefix",
    "visibility_timeout",
    "failure_threshold",
    "max_gap",
    "max_registers",
    "max_bits",
    "buffer_limit",
)


@cache
def code_version() -> str:
    """The package version and a digest of the sources that poll, so two installs of
    the same version with different code are told apart."""
    try:
        version = metadata.version("pollctl")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in ("polling", "workers"):
        for path in sorted((root / package).glob("**/*.py")):
            digest.update(path.read_bytes())
    return f"{version}+{digest.hexdigest()[:10]}"


def config_fingerprint(settings: Settings) -> str:
    masked = settings.masked()
    shared = {name: masked[f"POLLING_{name.upper()}"] for name in SHARED_SETTINGS}
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class ProcessInfo:
    """One live worker or beat, as its last heartbeat described it."""

    name: str
    host: str
    pid: int
    version: str
    config: str
    seen_ms: int
    queues: tuple[str, ...] = ()
    #: For a worker: whether it consumes a polling queue (some site's) now.
    polls: bool = False
    #: For a worker: the sites whose polling queues it consumes now (polling/sites.py).
    sites: tuple[str, ...] = ()
    #: For a beat: whether it holds the singleton lock and sends.
    active: bool = False
    #: This host's clock minus Redis's (ms), when measured.
    skew_ms: int | None = None

    def as_json(self) -> dict:
        return asdict(self)


def this_process(name: str, settings: Settings, now_ms: int, **extra: object) -> ProcessInfo:
    return ProcessInfo(
        name=name,
        host=socket.gethostname(),
        pid=os.getpid(),
        version=code_version(),
        config=config_fingerprint(settings),
        seen_ms=now_ms,
        **extra,  # type: ignore[arg-type]
    )


def publish(redis: Redis, key: str, info: ProcessInfo) -> None:
    redis.set(key, json.dumps(info.as_json()), px=TTL_MS)


def live(redis: Redis, pattern: str) -> list[ProcessInfo]:
    names = list(redis.scan_iter(match=pattern, count=1000))
    if not names:
        return []
    infos = []
    for raw in redis.mget(names):
        if raw is None:
            continue  # expired between SCAN and MGET
        data = json.loads(raw)
        data["queues"] = tuple(data.get("queues", ()))
        # A worker that polls and names no site (the release before sites) polls the
        # default site's queue alone.
        default = (DEFAULT_SITE,) if data.get("polls") else ()
        data["sites"] = tuple(data.get("sites") or default)
        infos.append(ProcessInfo(**data))
    return sorted(infos, key=lambda i: i.name)


def live_workers(redis: Redis, keys: Keys) -> list[ProcessInfo]:
    return live(redis, keys.workers_pattern)


def live_beats(redis: Redis, keys: Keys) -> list[ProcessInfo]:
    return live(redis, keys.beats_pattern)


def serving(workers: list[ProcessInfo]) -> dict[str, list[str]]:
    """Site -> names of the live workers consuming its polling queue now."""
    out: dict[str, list[str]] = {}
    for worker in workers:
        for site in worker.sites:
            out.setdefault(site, []).append(worker.name)
    return out
