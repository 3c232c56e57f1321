-- A movement of a gated sku takes the buyer's pass first, in the sale's slot; the movement
-- then runs in the item's, and sale_resolve.lua says how it ended.
-- KEYS: sale, outstanding, claims, passes. ARGV: place, units the movement may take, lease ms
-- (how long the movement may take before the claim counts as used).
-- Returns "ok", or why not: "used", "expired", "busy" (claimed by a movement in flight),
-- "unknown" (no pass at that place), "closed" or "missing".
local sale, outstanding, claims, passes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local place = ARGV[1]
local closed = redis.call('HGET', sale, 'closed')
if not closed then return 'missing' end
if closed == '1' then return 'closed' end
local ended = redis.call('HGET', passes, place)
if ended then return ended == 'x' and 'expired' or 'used' end
local expires = redis.call('ZSCORE', outstanding, place)
if not expires then return 'unknown' end
local now = now_ms()
if tonumber(expires) <= now then return 'expired' end
if redis.call('HEXISTS', claims, place) == 1 then return 'busy' end
redis.call('HSET', claims, place, ARGV[2] .. '|' .. (now + tonumber(ARGV[3])))
return 'ok'
