-- Remove the first entries of the buffer once a flusher has handled them (written, or put
-- aside as dead letters), only while that flusher still holds the flush lock: a flusher
-- whose lock expired must not trim what another one read after it.
--
-- KEYS: the buffer list, the set of buffered ids, the dead-letter list, the flush lock.
-- ARGV: the lock's token, how many entries were handled, their ids (as many), then the
--       dead letters (JSON) to keep.
-- Reply: 1 if trimmed, 0 if the lock was lost (nothing changed).
if redis.call('GET', KEYS[4]) ~= ARGV[1] then
  return 0
end
local n = tonumber(ARGV[2])
redis.call('LTRIM', KEYS[1], n, -1)
for i = 3, 2 + n do
  if ARGV[i] ~= '' then
    redis.call('SREM', KEYS[2], ARGV[i])
  end
end
for i = 3 + n, #ARGV do
  redis.call('RPUSH', KEYS[3], ARGV[i])
end
return 1
