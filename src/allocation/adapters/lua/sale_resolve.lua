-- How the movement that claimed a pass ended (sale_claim.lua): "used" (it sold: the pass is
-- spent and leaves the passes outstanding), "held" (a reservation holds its units: the pass
-- stays outstanding, kept by the reservation until it is confirmed, which spends it, or ends
-- otherwise, which gives it back: sale_settle.lua) or "back" (it was refused: the pass is the
-- buyer's again, and ends at its expiry as before).
-- KEYS: sale, outstanding, claims, passes, resolved, holds. ARGV: place, outcome, the claimed
-- pass's incarnation, and for "held" the reservation's id and its expiry (ms).
-- Returns 1, or 0 where the claim had ended already (its lease ran out: counted as used), or
-- is of another incarnation (Redis lost the queue meanwhile: the place may be another's now).
local sale, outstanding, claims, passes, resolved = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local place, outcome = ARGV[1], ARGV[2]
if not of_this_queue(sale, ARGV[3]) then return 0 end
local claim = redis.call('HGET', claims, place)
if not claim then return 0 end
redis.call('HDEL', claims, place)
if outcome == 'back' then return 1 end
local qty, key = string.match(claim, '^(%d+)|%d+|(.*)$')
if outcome == 'held' then
  redis.call('HSET', passes, place, 'h|' .. qty .. '|' .. ARGV[4] .. '|' .. key)
  redis.call('HSET', KEYS[6], ARGV[4], place .. '|' .. ARGV[5])
else
  redis.call('ZREM', outstanding, place)
  redis.call('HSET', passes, place, 'u|' .. qty .. '|' .. key)
  redis.call('HINCRBY', sale, 'used', 1)
end
-- Either way its units left the skus' available: a step on that read them before counts
-- them as gone (sale_advance.lua).
redis.call('ZADD', resolved, redis.call('HINCRBY', sale, 'epoch', 1), place)
return 1
