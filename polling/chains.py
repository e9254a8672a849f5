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

    def get(self, gateway_id: int) -> ChainState | None:
        return _state(self.redis.hgetall(self.keys.chain(gateway_id)))

    def all(self) -> dict[int, ChainState]:
        """Every live chain, by gateway id (one SCAN; no per-gateway round trips)."""
        names = list(self.redis.scan_iter(match=self.keys.chains_pattern, count=1000))
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(name)
        out = {}
        for name, fields in zip(names, pipe.execute(), strict=True):
            state = _state(fields)
            if state is not None:
                out[int(as_text(name).rsplit(":", 1)[1])] = state
        return out

    def issue(self, gateway_id: int, first_ms: int, last_ms: int | None = None) -> str:
        """Start a new chain: a fresh token replaces any old one, whose tasks then die."""
        token = uuid.uuid4().hex
        key = self.keys.chain(gateway_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, "token", token)
        pipe.hset(key, "due", first_ms)
        if last_ms is not None:
            pipe.hset(key, "last", last_ms)
        pipe.execute()
        return token

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


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _state(fields: dict) -> ChainState | None:
    data = {as_text(k): as_text(v) for k, v in fields.items()}
    if "token" not in data or "due" not in data:
        return None
    last = data.get("last")
    return ChainState(data["token"], int(data["due"]), int(last) if last else None)
