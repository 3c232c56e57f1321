-- Fence an item for a rebuild: movements answer 'fenced' until it is loaded again.
-- KEYS[1] item hash. Returns the item's seq, or -1 when Redis does not hold the item.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'fenced', '1')
return tonumber(redis.call('HGET', KEYS[1], 'seq') or 0)
