"""The chain of a gateway in Redis: its token, the slot it must poll next, and slot claims.

Every check-and-change is one Lua script, so two copies of a task can never both pass.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from redis import Redis

from .keys import Keys

Verdict = Literal["go", "stale", "moved", "claimed", "foreign"]

# KEYS: chain, claim. ARGV: token, slot, claim ttl (ms).
# stale: the token was retired or replaced; moved: the chain is past this slot;
# claimed: a copy of this very task has the slot; foreign: an older chain's task has it.
_BEGIN = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 'stale' end
if redis.call('HGET', KEYS[1], 'due') ~= ARGV[2] then return 'moved' end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[3]) then return 'go' end
if redis.call('GET', KEYS[2]) == ARGV[1] then return 'claimed' end
return 'foreign'
"""

# KEYS: chain. ARGV: token, slot, next slot. Only one caller moves a chain past a slot.
_ADVANCE = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'due') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'due', ARGV[3], 'last', ARGV[2])
return 1
"""

# KEYS: chain. ARGV: token ('' retires whatever token is there).
_RETIRE = """
if ARGV[1] == '' or redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# A batch of steps in one call: for each step the checks of _BEGIN, then each endpoint
# lock is taken if any of its steps got 'go', in the same atomic call, so a token checked
# here is still current while the lock is held (`pollctl stop` retires, then waits for it).
# KEYS: chain and claim of each step, then each lock.
# ARGV: n steps, m locks, (token, slot, claim ttl) per step,
#       then per lock: value, ttl (ms), k, and the k step numbers (1-based) it serves.
# Returns n verdicts, then m lock states: locked | busy | idle (no step of it went).
_BEGIN_BATCH = """
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local chain, claim = KEYS[2 * i - 1], KEYS[2 * i]
  local token, slot, ttl = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  local verdict = 'foreign'
  if redis.call('HGET', chain, 'token') ~= token then verdict = 'stale'
  elseif redis.call('HGET', chain, 'due') ~= slot then verdict = 'moved'
  elseif redis.call('SET', claim, token, 'NX', 'PX', ttl) then verdict = 'go'
  elseif redis.call('GET', claim) == token then verdict = 'claimed'
  end
  out[i] = verdict
end
local a = 3 * n + 3
for j = 1, m do
  local value, ttl, k = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local wanted = false
  for x = 1, k do
    if out[tonumber(ARGV[a + 2 + x])] == 'go' then wanted = true end
  end
  a = a + 3 + k
  local state = 'idle'
  if wanted then
    if redis.call('SET', KEYS[2 * n + j], value, 'NX', 'PX', ttl) then state = 'locked'
    else state = 'busy' end
  end
  out[n + j] = state
end
return out
"""

# KEYS: lock, then the chain of each step. ARGV: value, ttl (ms), each step's token.
# Takes the lock if free; then returns, per step, 1 while its token is still current.
_LOCK_BATCH = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local out = {}
for i = 2, #KEYS do
  out[i - 1] = (redis.call('HGET', KEYS[i], 'token') == ARGV[i + 1]) and 1 or 0
end
return out
"""

# KEYS: chain of each step, then each lock. ARGV: n, m, (token, slot, next) per step,
# then each lock's value. Advances each chain as _ADVANCE does and releases each lock
# still holding its value; returns 1 or 0 per step (advanced or not).
_FINISH_BATCH = """
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local token, slot, nxt = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  out[i] = 0
  if redis.call('HGET', KEYS[i], 'token') == token and redis.call('HGET', KEYS[i], 'due') == slot
  then
    redis.call('HSET', KEYS[i], 'due', nxt, 'last', slot)
    out[i] = 1
  end
end
for j = 1, m do
  if redis.call('GET', KEYS[n + j]) == ARGV[3 * n + 2 + j] then redis.call('DEL', KEYS[n + j]) end
end
return out
"""

# KEYS: chains. Returns token, due and last of each (one reply for many chains, so reading
# ten thousand costs one command to pack and parse instead of ten thousand).
_STATES = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HMGET', KEYS[i], 'token', 'due', 'last') end
return out
"""

#: Chains read per call of _STATES.
STATES_CHUNK = 1000


@dataclass(frozen=True)
class BatchStep:
    gateway_id: int
    token: str
    slot_ms: int
    claim_ttl_ms: int = 1


@dataclass(frozen=True)
class LockRequest:
    """An endpoint lock a batch wants, for the steps (indexes into the batch) it serves."""

    key: str
    value: str
    ttl_ms: int
    steps: tuple[int, ...]


@dataclass(frozen=True)
class ChainState:
    token: str
    #: Start of the next slot the chain will poll (ms since the epoch).
    due_ms: int
    #: Start of the last slot the chain accounted for, if any.
    last_ms: int | None


class Chains:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._begin = redis.register_script(_BEGIN)
        self._advance = redis.register_script(_ADVANCE)
        self._retire = redis.register_script(_RETIRE)
        self._begin_batch = redis.register_script(_BEGIN_BATCH)
        self._lock_batch = redis.register_script(_LOCK_BATCH)
        self._finish_batch = redis.register_script(_FINISH_BATCH)
        self._states = redis.register_script(_STATES)

    def get(self, gateway_id: int) -> ChainState | None:
        return _state(self.redis.hgetall(self.keys.chain(gateway_id)))

    def all(self) -> dict[int, ChainState]:
        """Every live chain, by gateway id: a SCAN for the keys, then one call per
        thousand chains (no per-gateway round trips or replies)."""
        names = [
            as_text(n) for n in self.redis.scan_iter(match=self.keys.chains_pattern, count=1000)
        ]
        out = {}
        for first in range(0, len(names), STATES_CHUNK):
            part = names[first : first + STATES_CHUNK]
            for name, (token, due, last) in zip(part, self._states(keys=part), strict=True):
                if token is not None and due is not None:
                    state = ChainState(as_text(token), int(due), int(last) if last else None)
                    out[int(name.rsplit(":", 1)[1])] = state
        return out

    def issue(self, gateway_id: int, first_ms: int, last_ms: int | None = None) -> str:
        """Start a new chain: a fresh token replaces any old one, whose tasks then die."""
        return self.issue_many([(gateway_id, first_ms, last_ms)])[0]

    def issue_many(self, chains: list[tuple[int, int, int | None]]) -> list[str]:
        """`issue` for many (gateway id, first slot, last slot), in one round trip."""
        tokens = [uuid.uuid4().hex for _ in chains]
        pipe = self.redis.pipeline(transaction=True)
        for (gateway_id, first_ms, last_ms), token in zip(chains, tokens, strict=True):
            key = self.keys.chain(gateway_id)
            pipe.delete(key)
            pipe.hset(key, "token", token)
            pipe.hset(key, "due", first_ms)
            if last_ms is not None:
                pipe.hset(key, "last", last_ms)
        pipe.execute()
        return tokens

    def retire(self, gateway_id: int, token: str = "") -> bool:
        """End the chain (only if it still has `token`, when given)."""
        return bool(self._retire(keys=[self.keys.chain(gateway_id)], args=[token]))

    def is_current(self, gateway_id: int, token: str) -> bool:
        current = self.redis.hget(self.keys.chain(gateway_id), "token")
        return current is not None and as_text(current) == token

    def begin(self, gateway_id: int, token: str, slot_ms: int, claim_ttl_ms: int) -> Verdict:
        keys = [self.keys.chain(gateway_id), self.keys.claim(gateway_id, slot_ms)]
        verdict = self._begin(keys=keys, args=[token, slot_ms, max(claim_ttl_ms, 1)])
        return as_text(verdict)  # type: ignore[return-value]

    def advance(self, gateway_id: int, token: str, slot_ms: int, next_ms: int) -> bool:
        args: list[str | int] = [token, slot_ms, next_ms]
        return bool(self._advance(keys=[self.keys.chain(gateway_id)], args=args))

    def begin_batch(
        self, steps: list[BatchStep], locks: list[LockRequest]
    ) -> tuple[list[Verdict], list[str]]:
        """`begin` for every step, then the locks of endpoints with a step to poll, in one
        atomic call. Returns the verdicts and each lock's state (locked, busy, idle)."""
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
        out = [as_text(v) for v in self._begin_batch(keys=keys, args=args)]
        return out[: len(steps)], out[len(steps) :]  # type: ignore[return-value]

    def lock_batch(self, lock: LockRequest, steps: list[BatchStep]) -> list[bool] | None:
        """Take a lock `begin_batch` found busy; None while it still is, else whether each
        of `steps` still has its token."""
        keys = [lock.key, *(self.keys.chain(s.gateway_id) for s in steps)]
        reply = self._lock_batch(
            keys=keys, args=[lock.value, max(lock.ttl_ms, 1), *(s.token for s in steps)]
        )
        return None if reply is None else [bool(x) for x in reply]

    def finish_batch(
        self, advances: list[tuple[BatchStep, int]], locks: list[LockRequest]
    ) -> list[bool]:
        """Advance each step's chain to its next slot (compare-and-set) and release the
        locks; returns which chains this call advanced."""
        keys = [self.keys.chain(step.gateway_id) for step, _ in advances]
        keys += [lock.key for lock in locks]
        args: list[str | int] = [len(advances), len(locks)]
        for step, next_ms in advances:
            args += [step.token, step.slot_ms, next_ms]
        args += [lock.value for lock in locks]
        return [bool(x) for x in self._finish_batch(keys=keys, args=args)]


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _state(fields: dict) -> ChainState | None:
    data = {as_text(k): as_text(v) for k, v in fields.items()}
    if "token" not in data or "due" not in data:
        return None
    last = data.get("last")
    return ChainState(data["token"], int(data["due"]), int(last) if last else None)
