-- How the movement that claimed a pass ended (sale_claim.lua): "used" (it sold: the pass is
-- spent and leaves the passes outstanding) or "back" (it was refused: the pass is the buyer's
-- again, and ends at its expiry as before).
-- KEYS: sale, outstanding, claims, passes, resolved. ARGV: place, outcome.
-- Returns 1, or 0 where the claim had ended already (its lease ran out: counted as used).
local sale, outstanding, claims, passes, resolved = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local place = ARGV[1]
local claim = redis.call('HGET', claims, place)
if not claim then return 0 end
redis.call('HDEL', claims, place)
if ARGV[2] == 'used' then
  redis.call('ZREM', outstanding, place)
  redis.call('HSET', passes, place, 'u|' .. string.match(claim, '^(%d+)|'))
  redis.call('ZADD', resolved, redis.call('HINCRBY', sale, 'epoch', 1), place)
  redis.call('HINCRBY', sale, 'used', 1)
end
return 1
