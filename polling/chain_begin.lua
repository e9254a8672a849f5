-- Begin a poll batch: check and claim each step, then take each endpoint lock that a
-- claimed step needs, in one atomic call, so a token checked here is still current while
-- the lock is held (`pollctl stop` retires the token, then waits for the lock).
--
-- KEYS: the chain hash and the slot-claim key of each of the n steps (2n keys), then the
--       key of each of the m endpoint locks.
-- ARGV: n, m; per step its token, slot start (ms) and claim TTL (ms); then per lock its
--       value, TTL (ms), k, and the k step numbers (1-based) it serves.
-- Reply: n step outcomes, then m lock states.
--   due        the step's token is current, its chain is due at its slot, and it claimed it
--   stale      the chain's token is another (retired or replaced)
--   moved      the chain is due at another slot (this step is a late copy)
--   duplicate  another copy of this very step (same token) holds the claim
--   foreign    a step of a replaced chain holds the claim
--   locked | busy | idle   the lock was taken | is held by another | no step needs it
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local chain, claim = KEYS[2 * i - 1], KEYS[2 * i]
  local token, slot, ttl = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  local outcome = 'foreign'
  if redis.call('HGET', chain, 'token') ~= token then outcome = 'stale'
  elseif redis.call('HGET', chain, 'due') ~= slot then outcome = 'moved'
  elseif redis.call('SET', claim, token, 'NX', 'PX', ttl) then outcome = 'due'
  elseif redis.call('GET', claim) == token then outcome = 'duplicate'
  end
  out[i] = outcome
end
local a = 3 * n + 3
for j = 1, m do
  local value, ttl, k = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local wanted = false
  for x = 1, k do
    if out[tonumber(ARGV[a + 2 + x])] == 'due' then wanted = true end
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
