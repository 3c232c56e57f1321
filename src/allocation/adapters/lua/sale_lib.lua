-- Shared by the sale's scripts (prepended after lib.lua). A sale's keys share one hash tag:
-- sale: the hash of its terms and figures {opens_at, factor, max (0: none), ttl_ms, closed,
--   skus, joined, serving, prequeue, order_key, sold_out, used, expired, epoch};
-- buyers: buyer -> "number|joined_at_ms" (one place per buyer);
-- outstanding: places holding a pass, scored by the pass's expiry (ms);
-- claims: place -> "qty|lease_until_ms", a pass taken by a movement still in flight;
-- passes: place -> "u|qty" (used) or "x" (expired);
-- resolved: places whose pass was used, scored by the epoch of the use.
-- Places are the serving order (allocation.domain.sale): the rules here mirror it.

-- The opening: the pre-queue's size is fixed and its order's key drawn, once.
local function open_if_due(sale, now, candidate_key)
  local opens_at, prequeue = unpack(redis.call('HMGET', sale, 'opens_at', 'prequeue'))
  if prequeue or tonumber(opens_at) > now then return end
  redis.call('HSET', sale, 'prequeue', redis.call('HGET', sale, 'joined') or 0,
             'order_key', candidate_key)
end

-- The sale's figures, as allocation.adapters.redis_sale reads them.
local function sale_figures(sale, outstanding, now)
  local f = redis.call('HMGET', sale, 'joined', 'serving', 'prequeue', 'order_key', 'used',
                       'expired', 'sold_out', 'closed', 'epoch')
  return {tonumber(f[1] or 0), tonumber(f[2] or 0), f[3] or '', f[4] or '',
          redis.call('ZCARD', outstanding), tonumber(f[5] or 0), tonumber(f[6] or 0),
          tonumber(f[7] or 0), tonumber(f[8] or 0), tonumber(f[9] or 0), now}
end
