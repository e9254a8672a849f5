-- End a chain, only if it still has the given token ('' ends whatever chain is there), so
-- a late step of an old chain cannot end the chain that replaced it.
--
-- KEYS: the chain hash. ARGV: the token, or ''.
-- Reply: 1 if the chain was deleted, else 0.
if ARGV[1] == '' or redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
