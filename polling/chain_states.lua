-- Read many chains in one reply (ten thousand cost one command to pack and parse instead
-- of ten thousand).
--
-- KEYS: chain hashes. ARGV: none.
-- Reply: per chain, its token, due, last and paced fields (nil where missing).
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HMGET', KEYS[i], 'token', 'due', 'last', 'paced') end
return out
