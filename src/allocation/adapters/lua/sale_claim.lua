-- A movement of a gated sku takes the buyer's pass first, in the sale's slot; the movement
-- then runs in the item's, and sale_resolve.lua says how it ended.
-- KEYS: sale, outstanding, claims, passes. ARGV: place, units the movement may take, lease ms
-- (how long the movement may take before the claim counts as used), the movement's
-- idempotency key ("" for none), the pass's incarnation.
-- Returns "ok", or why not: "replay" (the pass was spent, or is kept by a hold, under this
-- key: its retry goes through, to be answered as it first was), "used", "expired", "held"
-- (kept by a reservation), "busy" (claimed by a movement in flight), "unknown" (no pass at
-- that place), "closed", "missing" or "other" (the pass is of another incarnation of the
-- queue: Redis lost the one that gave it, and its places are not this one's).
local sale, outstanding, claims, passes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local place, key = ARGV[1], ARGV[4] or ''
local closed = redis.call('HGET', sale, 'closed')
if not closed then return 'missing' end
if not of_this_queue(sale, ARGV[5]) then return 'other' end
local ended = redis.call('HGET', passes, place)
if ended and ended ~= 'x' and key ~= '' and spent_by(ended) == key then return 'replay' end
if closed == '1' then return 'closed' end
if ended then
  local kind = string.sub(ended, 1, 1)
  return kind == 'x' and 'expired' or kind == 'h' and 'held' or 'used'
end
local expires = redis.call('ZSCORE', outstanding, place)
if not expires then return 'unknown' end
local now = now_ms()
if tonumber(expires) <= now then return 'expired' end
if redis.call('HEXISTS', claims, place) == 1 then return 'busy' end
redis.call('HSET', claims, place, ARGV[2] .. '|' .. (now + tonumber(ARGV[3])) .. '|' .. key)
return 'ok'
