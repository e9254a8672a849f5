"""Commands the CLI has a worker run (a manual poll, a write, of a gateway only its site's
worker can reach: a serial line is on one host) and their answers, through Redis.

The command carries a nonce. Whoever takes the nonce first decides: the worker, to run it,
or the CLI, giving up after its wait. So a command the CLI stopped waiting for never runs
later (a write an operator saw fail must not happen five minutes on), and one a worker has
begun is waited for to its end."""

from __future__ import annotations

import json
from typing import Any

import redis

from .keys import Keys

#: How long a nonce's claim and answer stay in Redis.
KEEP_S = 600
WORKER = "worker"
CLI = "cli"


def take(client: redis.Redis, keys: Keys, nonce: str, who: str) -> bool:
    """Whether `who` took the command first (the other side then leaves it alone)."""
    return bool(client.set(keys.command(nonce), who, nx=True, ex=KEEP_S))


def answer(client: redis.Redis, keys: Keys, nonce: str, payload: dict[str, Any]) -> None:
    pipe = client.pipeline()
    pipe.rpush(keys.reply(nonce), json.dumps(payload))
    pipe.expire(keys.reply(nonce), KEEP_S)
    pipe.execute()


def wait(client: redis.Redis, keys: Keys, nonce: str, timeout_s: float) -> dict | None:
    """The answer, or None after `timeout_s`."""
    got = client.blpop([keys.reply(nonce)], timeout=max(timeout_s, 0.01))
    return None if got is None else json.loads(got[1])


def ask(
    client: redis.Redis, keys: Keys, nonce: str, wait_s: float, run_s: float
) -> tuple[dict | None, bool]:
    """Wait `wait_s` for a worker to take and answer the command; if none has taken it by
    then, take it back: (None, True), it will never run. If one has, wait `run_s` more for
    its answer: (None, False) when it gave none (the worker died, say)."""
    got = wait(client, keys, nonce, wait_s)
    if got is not None:
        return got, False
    if take(client, keys, nonce, CLI):
        return None, True
    return wait(client, keys, nonce, run_s), False
