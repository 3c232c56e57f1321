-- How a reservation that keeps a pass (sale_resolve.lua, "held") stands: "used" (confirmed:
-- the pass is spent), "back" (released or expired: the pass is the buyer's again until its
-- own expiry, a step on ends it past that) or "held" (still held: its hold now ends at the
-- expiry given, after an extend).
-- KEYS: sale, outstanding, passes, holds. ARGV: reservation id, outcome, expiry ms ("held").
-- Returns 1, or 0 where the reservation keeps no pass (settled already, or never did).
local sale, outstanding, passes, holds = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid, outcome = ARGV[1], ARGV[2]
local link = redis.call('HGET', holds, rid)
if not link then return 0 end
local place = string.match(link, '^(%d+)|')
if outcome == 'held' then
  redis.call('HSET', holds, rid, place .. '|' .. ARGV[3])
  return 1
end
redis.call('HDEL', holds, rid)
local kept = redis.call('HGET', passes, place) or ''
local qty, key = string.match(kept, '^h|(%d+)|[^|]*|(.*)$')
if not qty then return 1 end
if outcome == 'used' then
  redis.call('ZREM', outstanding, place)
  redis.call('HSET', passes, place, 'u|' .. qty .. '|' .. key)
  redis.call('HINCRBY', sale, 'used', 1)
else
  redis.call('HDEL', passes, place)
end
return 1
