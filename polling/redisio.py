"""Talking to Redis: scripts kept as `.lua` files beside the module that runs them (each
file's header says its keys, arguments and reply), and replies as text."""

from __future__ import annotations

from importlib import resources

from redis import Redis
from redis.commands.core import Script


def script(redis: Redis, package: str, name: str) -> Script:
    """The script `name` of `package` (a module's `__package__`), registered on `redis`."""
    return redis.register_script(resources.files(package).joinpath(name).read_text())


def as_text(value: bytes | str) -> str:
    """A reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value
