-- Shared by the scripts that change items (prepended to each: Redis has no script imports).

-- Redis's own clock, in milliseconds: every node's scripts agree with themselves, whatever the
-- callers' clocks say.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Append a movement to its partition's outbox, as allocation.adapters.redis_outbox reads it:
-- one field, numbers first, then the names by length (one field costs the ledger worker far
-- less to parse than a dozen).
local function record(outbox, m)
  redis.call('XADD', outbox, '*', 'm',
             string.format('%d %d %d %d %s %d %d %s %d %d %d %d|', m.seq, m.qty, m.total,
                           m.consumed, m.kind, #m.ns, #m.sku, m.gen, #m.buyer, m.held, #m.rid,
                           m.expires or 0)
             .. m.ns .. m.sku .. m.buyer .. m.rid .. (m.key or ''))
end

-- A hold is "qty|expires_ms|buyer".
local function parse_hold(value)
  local qty, expires, buyer = string.match(value, '^(%d+)|(%d+)|(.*)$')
  return tonumber(qty), tonumber(expires), buyer
end

-- Give a buyer back units they held or bought (never below nothing).
local function give_back(buyers, buyer, qty)
  if buyer == '' then return end
  local used = tonumber(redis.call('HGET', buyers, buyer) or '0')
  if used > qty then redis.call('HSET', buyers, buyer, used - qty)
  elseif used > 0 then redis.call('HDEL', buyers, buyer) end
end

local function figures_event(name, k, fig, extra)
  local event = {event = name, namespace = k.ns, sku = k.sku, total = fig.total,
                 consumed = fig.consumed, held = fig.held,
                 available = fig.total - fig.consumed - fig.held}
  for key, value in pairs(extra) do event[key] = value end
  return cjson.encode(event)
end

-- End one hold of an item (confirm: its units are sold; release, expire: back on sale): one
-- movement of the item, in the outbox and on the events channel. Returns false where the item
-- holds no such hold (it ended before).
-- k: {item, outbox, buyers, holds, expiries, ns, sku}; fig: the item's figures, updated.
local function end_hold(k, fig, rid, kind, channel)
  local value = redis.call('HGET', k.holds, rid)
  if not value then return false end
  local qty, _, buyer = parse_hold(value)
  redis.call('HDEL', k.holds, rid)
  redis.call('ZREM', k.expiries, rid)
  fig.held = fig.held - qty
  if kind == 'confirm' then fig.consumed = fig.consumed + qty else give_back(k.buyers, buyer, qty) end
  fig.seq = fig.seq + 1
  redis.call('HSET', k.item, 'consumed', fig.consumed, 'held', fig.held, 'seq', fig.seq)
  record(k.outbox, {seq = fig.seq, qty = qty, total = fig.total, consumed = fig.consumed,
                    kind = kind, ns = k.ns, sku = k.sku, gen = fig.gen, buyer = buyer,
                    held = fig.held, rid = rid})
  if channel ~= '' then
    local names = {confirm = 'ReservationConfirmed', release = 'ReservationReleased',
                   expire = 'ReservationExpired'}
    redis.call('PUBLISH', channel, figures_event(names[kind], k, fig,
                                                 {reservation_id = rid, qty = qty}))
  end
  return true
end

-- End the item's holds that are due (at most `most` of them: correctness never waits on a
-- sweeper, and no call does unbounded work; a hold left due only understates what is
-- available, never overstates it).
local function expire_due(k, fig, now, most, channel)
  local due = redis.call('ZRANGEBYSCORE', k.expiries, '-inf', now, 'LIMIT', 0, most)
  for _, rid in ipairs(due) do
    if not end_hold(k, fig, rid, 'expire', channel) then redis.call('ZREM', k.expiries, rid) end
  end
  return #due
end
