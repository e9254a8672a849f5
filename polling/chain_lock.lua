-- Take one endpoint lock if it is free (a lock `chain_begin` found busy, a manual poll's,
-- or `pollctl stop` making sure no poll is in flight), and say which steps are still
-- current now that it is held.
--
-- KEYS: the lock, then the chain hash of each step (none for a manual poll or a stop).
-- ARGV: the lock's value, its TTL (ms), then each step's token.
-- Reply: nil while another holds the lock; else, per step, 1 while its token is current.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local out = {}
for i = 2, #KEYS do
  out[i - 1] = (redis.call('HGET', KEYS[i], 'token') == ARGV[i + 1]) and 1 or 0
end
return out
