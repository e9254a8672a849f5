"""The chain of a gateway in Redis (its token, the slot it polls next, slot claims) and the
endpoint locks its polls hold. Every check-and-change is one script (`chain_*.lua`), so two
copies of a step can never both pass, and a token checked there is still current while the
lock taken in the same call is held.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from redis import Redis

from .keys import Keys
from .outcome import Outcome
from .redisio import as_text, script

#: Chains read per call of chain_states.lua.
STATES_CHUNK = 1000


class LockState(StrEnum):
    LOCKED = "locked"  # taken by this call
    BUSY = "busy"  # held by another poll
    IDLE = "idle"  # not wanted: none of its steps is due


@dataclass(frozen=True)
class StepClaim:
    """A chain step as a batch begins it: its slot is claimed for `claim_ttl_ms`."""

    gateway_id: int
    token: str
    slot_ms: int
    claim_ttl_ms: int = 1


@dataclass(frozen=True)
class EndpointLock:
    """An endpoint lock a batch wants, for the steps (indexes into the batch) it serves."""

    key: str
    value: str
    ttl_ms: int
    steps: tuple[int, ...] = ()


@dataclass(frozen=True)
class ChainState:
    token: str
    #: Start of the next slot the chain will poll (ms since the epoch).
    due_ms: int
    #: Start of the last slot the chain accounted for, if any.
    last_ms: int | None
    #: A paced start (polling/pacing.py): the chain was not to begin before this, so its
    #: first slot may lie further ahead than one interval.
    paced_ms: int | None = None


class Chains:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._begin = script(redis, __package__, "chain_begin.lua")
        self._lock = script(redis, __package__, "chain_lock.lua")
        self._finish = script(redis, __package__, "chain_finish.lua")
        self._retire = script(redis, __package__, "chain_retire.lua")
        self._states = script(redis, __package__, "chain_states.lua")

    def get(self, gateway_id: int) -> ChainState | None:
        fields = self.redis.hgetall(self.keys.chain(gateway_id))
        data = {as_text(k): as_text(v) for k, v in fields.items()}
        if "token" not in data or "due" not in data:
            return None
        last = data.get("last")
        return ChainState(data["token"], int(data["due"]), int(last) if last else None)

    def all(self) -> dict[int, ChainState]:
        """Every live chain, by gateway id: a SCAN for the keys, then one call per
        thousand chains (no per-gateway round trips or replies)."""
        names = [
            as_text(n) for n in self.redis.scan_iter(match=self.keys.chains_pattern, count=1000)
        ]
        out = {}
        for first in range(0, len(names), STATES_CHUNK):
            part = names[first : first + STATES_CHUNK]
            for name, (token, due, last, paced) in zip(part, self._states(keys=part), strict=True):
                if token is not None and due is not None:
                    state = ChainState(
                        as_text(token),
                        int(due),
                        int(last) if last else None,
                        int(paced) if paced else None,
                    )
                    out[self.keys.chain_gateway(name)] = state
        return out

    def epoch_born(self, now_ms: int) -> int:
        """When this Redis's state began (see `Keys.epoch`), starting an epoch now if it
        has none. Any poll that began earlier did so under state that may be lost."""
        fresh = f"{uuid.uuid4().hex}:{now_ms}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.keys.epoch, fresh, nx=True)
        pipe.get(self.keys.epoch)
        _, current = pipe.execute()
        return int(as_text(current).rsplit(":", 1)[1])

    def issue(
        self, chains: list[tuple[int, int, int | None]], paced: dict[int, int] | None = None
    ) -> list[str]:
        """Start a chain for each (gateway id, first slot, last slot accounted for), in one
        round trip: a fresh token replaces any old one, whose steps then die stale.
        `paced`: gateway id -> the time a paced start let its chain begin."""
        tokens = [uuid.uuid4().hex for _ in chains]
        pipe = self.redis.pipeline(transaction=True)
        for (gateway_id, first_ms, last_ms), token in zip(chains, tokens, strict=True):
            key = self.keys.chain(gateway_id)
            pipe.delete(key)
            pipe.hset(key, "token", token)
            pipe.hset(key, "due", first_ms)
            if last_ms is not None:
                pipe.hset(key, "last", last_ms)
            if paced and gateway_id in paced:
                pipe.hset(key, "paced", paced[gateway_id])
        pipe.execute()
        return tokens

    def retire(self, gateway_id: int, token: str = "") -> bool:
        """End the chain (only if it still has `token`, when given)."""
        return bool(self._retire(keys=[self.keys.chain(gateway_id)], args=[token]))

    def begin(
        self, steps: list[StepClaim], locks: list[EndpointLock]
    ) -> tuple[list[Outcome], list[LockState]]:
        """Check and claim every step, then take the locks of endpoints with a due step,
        in one atomic call: each step's outcome (due, stale, moved, duplicate, foreign)
        and each lock's state."""
        keys: list[str] = []
        args: list[str | int] = [len(steps), len(locks)]
        for step in steps:
            keys += [
                self.keys.chain(step.gateway_id),
                self.keys.claim(step.gateway_id, step.slot_ms),
            ]
            args += [step.token, step.slot_ms, max(step.claim_ttl_ms, 1)]
        for lock in locks:
            keys.append(lock.key)
            args += [lock.value, max(lock.ttl_ms, 1), len(lock.steps), *(i + 1 for i in lock.steps)]
        out = [as_text(v) for v in self._begin(keys=keys, args=args)]
        return [Outcome(v) for v in out[: len(steps)]], [LockState(v) for v in out[len(steps) :]]

    def take(self, lock: EndpointLock, steps: Sequence[StepClaim] = ()) -> list[bool] | None:
        """Take a lock if it is free: None while another holds it, else whether each of
        `steps` still has its token."""
        keys = [lock.key, *(self.keys.chain(s.gateway_id) for s in steps)]
        args: list[str | int] = [lock.value, max(lock.ttl_ms, 1), *(s.token for s in steps)]
        reply = self._lock(keys=keys, args=args)
        return None if reply is None else [bool(x) for x in reply]

    def finish(
        self, advances: list[tuple[StepClaim, int]], locks: list[EndpointLock]
    ) -> list[bool]:
        """Advance each step's chain to its next slot (compare-and-set) and release the
        locks; returns which chains this call advanced."""
        keys = [self.keys.chain(step.gateway_id) for step, _ in advances]
        keys += [lock.key for lock in locks]
        args: list[str | int] = [len(advances), len(locks)]
        for step, next_ms in advances:
            args += [step.token, step.slot_ms, next_ms]
        args += [lock.value for lock in locks]
        return [bool(x) for x in self._finish(keys=keys, args=args)]

    def release(self, locks: list[EndpointLock]) -> None:
        if locks:
            self.finish([], locks)
