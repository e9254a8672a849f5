"""The collaborators one process needs (database, Redis, Modbus connections), built once
from the settings and passed to the service functions."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from .buffer import RecordBuffer
from .chains import Chains
from .db import check_database, make_engine, session_factory
from .errors import ServiceUnavailable
from .fleetclock import FleetClock, describe
from .keys import Keys
from .live import LiveWatch
from .modbus import ModbusPool
from .schedule import now_ms
from .settings import Settings, mask_url
from .shedding import Shedder

if TYPE_CHECKING:
    from .plan import PollTarget


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: redis.Redis
    keys: Keys
    chains: Chains
    buffer: RecordBuffer
    #: Modbus connections and their asyncio loop (its thread starts on first use).
    modbus: ModbusPool = field(default_factory=ModbusPool)
    #: The fleet's clock (`FleetClock`, Redis's); tests put a plain function here.
    clock: Callable[[], int] = field(default=now_ms)
    #: Last configuration read for each gateway, so chains go on polling (into the buffer)
    #: while the database is unreachable.
    known: dict[int, PollTarget] = field(default_factory=dict)
    #: The configuration stamp each entry of `known` was read under.
    known_stamp: dict[int, str | None] = field(default_factory=dict)
    #: The whole fleet and the stamp it was read under (see configcache.fleet).
    fleet: tuple[str | None, list[PollTarget]] | None = None
    #: Which live-feed channels have subscribers, and the publishing failures (see live).
    live: LiveWatch = field(default_factory=LiveWatch)
    #: This process's overload level and each gateway's shed balance (see shedding).
    shedder: Shedder = field(default_factory=Shedder)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        engine = make_engine(settings.database_url)
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=5,
            socket_timeout=10,
            health_check_interval=30,
        )
        keys = Keys(settings.key_prefix)
        return cls(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            redis=client,
            keys=keys,
            chains=Chains(client, keys),
            buffer=RecordBuffer(client, keys, settings.buffer_limit),
            clock=FleetClock(client),
        )

    def check(self) -> None:
        """Raise ServiceUnavailable, naming the URL, if Redis or the database is down."""
        check_redis(self.redis, self.settings.redis_url)
        check_database(self.engine)

    def clock_trouble(self) -> str | None:
        """Why this process must not poll or reconcile: its own clock is further from
        Redis's than `clock_skew_max` (Celery times ETA messages by the host's clock)."""
        clock = self.clock
        if not isinstance(clock, FleetClock) or clock.within(self.settings.clock_skew_max):
            return None
        assert clock.skew_ms is not None
        return (
            f"this host's clock is {describe(clock.skew_ms)}, past POLLING_CLOCK_SKEW_MAX "
            f"({self.settings.clock_skew_max:g} s): fix its time sync (chrony, timesyncd)"
        )

    def bump_config(self) -> None:
        """Tell every process its in-memory gateways may be stale (see configcache)."""
        self.redis.set(self.keys.config_stamp, uuid.uuid4().hex)

    def close(self) -> None:
        self.modbus.close()
        self.redis.close()
        self.engine.dispose()


def check_redis(client: redis.Redis, url: str) -> None:
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"redis {mask_url(url)} is unreachable: {exc}") from None
