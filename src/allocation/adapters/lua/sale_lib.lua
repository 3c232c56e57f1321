-- Shared by the sale's scripts (prepended after lib.lua). A sale's keys share one hash tag:
-- sale: the hash of its terms and figures {opens_at, factor, max (0: none), ttl_ms, closed,
--   skus, joined, serving, prequeue, order_key, sold_out, used, expired, epoch, inc (the
--   incarnation: drawn where the queue starts, again after Redis lost it: sale_put.lua)};
-- buyers: buyer -> "number|joined_at_ms" (one place per buyer);
-- outstanding: places holding a pass, scored by the pass's expiry (ms);
-- claims: place -> "qty|lease_until_ms|key", a pass taken by a movement still in flight
--   under that idempotency key ("" for none);
-- passes: place -> "u|qty|key" (used by the movement under that key), "x" (expired) or
--   "h|qty|rid|key" (kept by the reservation rid, held under that key: still outstanding,
--   it neither expires nor buys anything else until the hold ends);
-- resolved: places whose pass was used or kept by a hold, scored by the epoch of it;
-- holds: rid -> "place|expires_ms", the passes kept by holds and when each hold ends (a step
--   on asks the reservation how it ended once that is past: sale_settle.lua).
-- Places are the serving order (allocation.domain.sale): the rules here mirror it.

-- The idempotency key of the movement that spent or keeps a pass ("" for none).
local function spent_by(ended)
  return string.match(ended, '^u|%d+|(.*)$') or string.match(ended, '^h|%d+|[^|]*|(.*)$')
    or ''
end

-- A sale's event on the events channel ("" for none), as API.md names them.
local function sale_event(sale, channel, name, extra)
  if channel == '' then return end
  local f = redis.call('HMGET', sale, 'ns', 'name', 'joined', 'serving', 'used', 'expired')
  local event = {event = name, namespace = f[1], sale = f[2], joined = tonumber(f[3] or 0),
                 serving = tonumber(f[4] or 0), used = tonumber(f[5] or 0),
                 expired = tonumber(f[6] or 0)}
  for key, value in pairs(extra) do event[key] = value end
  redis.call('PUBLISH', channel, cjson.encode(event))
end

-- The opening: the pre-queue's size is fixed and its order's key drawn, once.
local function open_if_due(sale, now, candidate_key, channel)
  local opens_at, prequeue = unpack(redis.call('HMGET', sale, 'opens_at', 'prequeue'))
  if prequeue or tonumber(opens_at) > now then return end
  local size = redis.call('HGET', sale, 'joined') or 0
  redis.call('HSET', sale, 'prequeue', size, 'order_key', candidate_key)
  sale_event(sale, channel, 'SaleOpened', {prequeue = tonumber(size)})
end

-- The sale's figures, as allocation.adapters.redis_sale reads them.
local function sale_figures(sale, outstanding, now)
  local f = redis.call('HMGET', sale, 'joined', 'serving', 'prequeue', 'order_key', 'used',
                       'expired', 'sold_out', 'closed', 'epoch', 'inc')
  return {tonumber(f[1] or 0), tonumber(f[2] or 0), f[3] or '', f[4] or '',
          redis.call('ZCARD', outstanding), tonumber(f[5] or 0), tonumber(f[6] or 0),
          tonumber(f[7] or 0), tonumber(f[8] or 0), tonumber(f[9] or 0), now, f[10] or ''}
end

-- Whether a ticket's or a pass's incarnation is the sale's queue's now ("" for a sale put
-- before incarnations were: its tickets carry none either).
local function of_this_queue(sale, inc)
  return (redis.call('HGET', sale, 'inc') or '') == (inc or '')
end
