-- Fence an item for a rebuild: movements answer 'fenced' until it is loaded again.
-- KEYS[1] item hash. Returns the item's seq, or -1 when Redis does not hold the item (a hash
-- without figures, such as a limit a rebuild set before it failed, holds none).
if redis.call('HEXISTS', KEYS[1], 'total') == 0 then return -1 end
redis.call('HSET', KEYS[1], 'fenced', '1')
return tonumber(redis.call('HGET', KEYS[1], 'seq') or 0)
