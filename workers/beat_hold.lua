-- Keep beat's singleton lock if it is ours, else take it if it is free.
--
-- KEYS: the lock. ARGV: this beat's token, the lock's TTL (ms).
-- Reply: 1 while this beat holds the lock, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
