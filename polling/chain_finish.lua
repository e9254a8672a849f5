-- Finish a poll batch: advance each chain past its step's slot (compare-and-set: only a
-- chain still at this token and slot moves, so one caller moves it), then release each
-- endpoint lock that still holds our value (one that expired and was taken by another
-- poll is left alone).
--
-- KEYS: the chain hash of each of the n steps, then each of the m locks.
-- ARGV: n, m; per step its token, slot start and next slot start (ms); then each lock's
--       value.
-- Reply: per step, 1 if this call advanced its chain, else 0.
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
