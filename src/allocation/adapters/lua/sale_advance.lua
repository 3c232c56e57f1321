-- Move a sale's queue on: open it when due, end expired passes, set or clear sold out, and
-- admit as many waiting places as the rule allows (allocation.domain.sale.admission_room).
-- KEYS: sale, outstanding, claims, passes, resolved, holds.
-- ARGV: available (the skus' available units, read after the sale's epoch), held (their
-- held units), that epoch, a random key for the pre-queue's order, the most places to admit
-- in this call, the events channel ("" for none).
-- The figures were read from the items' slots, which a script here cannot read on a cluster:
-- units that passes may have taken since they were read are counted as gone (claims in
-- flight, and uses resolved after that epoch), so admission never outruns the stock.
-- Returns the sale's figures (sale_lib.lua) then the ids of the reservations keeping a pass
-- whose hold is past its end (the caller asks each how it ended: sale_settle.lua), or {}
-- where the sale is missing.
local sale, outstanding, claims, passes, resolved = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local available, held = tonumber(ARGV[1]), tonumber(ARGV[2])
local read_epoch, most = tonumber(ARGV[3]), tonumber(ARGV[5])
local RESOLVED_WINDOW = 100000
if not redis.call('HGET', sale, 'closed') then return {} end
local now = now_ms()
local channel = ARGV[6] or ''
open_if_due(sale, now, ARGV[4], channel)

-- A claim whose movement never answered (its process died) counts as used: never twice.
local flat = redis.call('HGETALL', claims)
for i = 1, #flat, 2 do
  local place, qty, lease, key = flat[i], string.match(flat[i + 1], '^(%d+)|(%d+)|(.*)$')
  if tonumber(lease) <= now then
    redis.call('HDEL', claims, place)
    redis.call('ZREM', outstanding, place)
    redis.call('HSET', passes, place, 'u|' .. qty .. '|' .. key)
    redis.call('ZADD', resolved, redis.call('HINCRBY', sale, 'epoch', 1), place)
    redis.call('HINCRBY', sale, 'used', 1)
  end
end

-- Passes past their expiry end and give their room back (one in a claim, or kept by a hold,
-- waits for it).
for _, place in ipairs(redis.call('ZRANGEBYSCORE', outstanding, '-inf', now, 'LIMIT', 0,
                                 1000)) do  -- the rest at the next step on
  if redis.call('HEXISTS', claims, place) + redis.call('HEXISTS', passes, place) == 0 then
    redis.call('ZREM', outstanding, place)
    redis.call('HSET', passes, place, 'x')
    redis.call('HINCRBY', sale, 'expired', 1)
  end
end

local sold_out = (available <= 0 and held <= 0) and 1 or 0
if redis.call('HGET', sale, 'sold_out') ~= tostring(sold_out) then
  redis.call('HSET', sale, 'sold_out', sold_out)
  if sold_out == 1 and redis.call('HGET', sale, 'closed') == '0' then
    sale_event(sale, channel, 'SaleSoldOut', {state = 'sold_out'})
  end
end
local f = redis.call('HMGET', sale, 'closed', 'prequeue', 'joined', 'serving', 'factor', 'max',
                     'ttl_ms', 'epoch')
local epoch = tonumber(f[8] or 0)
redis.call('ZREMRANGEBYSCORE', resolved, '-inf', epoch - RESOLVED_WINDOW)
if f[1] == '0' and f[2] and read_epoch > epoch - RESOLVED_WINDOW then
  local pending = 0
  for _, value in ipairs(redis.call('HVALS', claims)) do
    pending = pending + tonumber(string.match(value, '^(%d+)|'))
  end
  for _, place in ipairs(redis.call('ZRANGEBYSCORE', resolved, '(' .. read_epoch, '+inf')) do
    local ended = redis.call('HGET', passes, place) or ''  -- none: a hold gave it back
    pending = pending + tonumber(string.match(ended, '^[uh]|(%d+)|') or 0)
  end
  local bound = math.floor(tonumber(f[5]) * math.max(available - pending, 0))
  local max_admitted = tonumber(f[6])
  if max_admitted > 0 and max_admitted < bound then bound = max_admitted end
  local room = math.max(bound - redis.call('ZCARD', outstanding), 0)
  local joined, serving = tonumber(f[3] or 0), tonumber(f[4] or 0)
  local admit = math.min(room, joined - serving, most)
  local expires = now + tonumber(f[7])
  for place = serving, serving + admit - 1 do
    redis.call('ZADD', outstanding, expires, place)
  end
  if admit > 0 then redis.call('HSET', sale, 'serving', serving + admit) end
end
local figures = sale_figures(sale, outstanding, now)
local kept = redis.call('HGETALL', KEYS[6])
for i = 1, #kept, 2 do
  if tonumber(string.match(kept[i + 1], '|(%d+)$')) <= now and #figures < 112 then
    figures[#figures + 1] = kept[i]  -- at most 100 a step on
  end
end
return figures
