-- Shared by the scripts that change items or read the clock (prepended to each: Redis has no
-- script imports).

-- The most an adjustment may raise an item's total to (API.md: total is 0..1_000_000_000;
-- allocation.domain.rules.MAX_TOTAL states it).
local MAX_TOTAL = 1000000000

-- Redis's own clock, in milliseconds: every node's scripts agree with themselves, whatever the
-- callers' clocks say. A test sets the slot's "clock" key (KeySpace.clock, under its own key
-- prefix) to stop this clock at a moment it then moves, so that holds expire without waiting;
-- nothing else writes that key.
local function now_ms()
  local stopped = redis.call('GET', string.match(KEYS[1], '^(.-{%d+})') .. ':clock')
  if stopped then return tonumber(stopped) end
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

-- Count a hold's start or end in the partition's tally of the sale (read by /metrics): units
-- and holds by namespace and kind. Counted here, where every hold starts and ends, whoever
-- ended it: a confirm, a release, or an expiry that a sale, a hold or the sweeper ran into.
local function count_hold(k, kind, qty)
  redis.call('HINCRBY', k.tally, k.ns .. '\nunits:' .. kind, qty)
  redis.call('HINCRBY', k.tally, k.ns .. '\nholds:' .. kind, 1)
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
-- k: {item, outbox, buyers, holds, expiries, tally, ns, sku}; fig: the item's figures, updated.
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
  count_hold(k, kind, qty)
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

-- Move the expiry of every line's hold of `rid` that is still there (extend, pin) to `expires`,
-- keeping the sweeper's index of items by next expiry right.
local function expire_at(lines, rid, expires, due)
  for _, k in ipairs(lines) do
    local value = redis.call('HGET', k.holds, rid)
    if value then
      local qty, _, who = parse_hold(value)
      redis.call('HSET', k.holds, rid, qty .. '|' .. expires .. '|' .. who)
      redis.call('ZADD', k.expiries, expires, rid)
      redis.call('ZADD', due, 'LT', expires, k.ns .. '\n' .. k.sku)
    end
  end
end

-- A reservation's extension: each line's hold still there moves to `expires`, one 'extend'
-- movement of its item carrying the new expiry (a rebuild restores the hold with it).
local function extend_holds(lines, figs, rid, expires, due)
  for i, k in ipairs(lines) do
    local value = redis.call('HGET', k.holds, rid)
    if value then
      local qty, _, who = parse_hold(value)
      expire_at({k}, rid, expires, due)
      local fig = figs[i]
      fig.seq = fig.seq + 1
      redis.call('HSET', k.item, 'seq', fig.seq)
      record(k.outbox, {seq = fig.seq, qty = qty, total = fig.total, consumed = fig.consumed,
                        kind = 'extend', ns = k.ns, sku = k.sku, gen = fig.gen, buyer = who,
                        held = fig.held, rid = rid, expires = expires})
    end
  end
end

-- End the item's holds that are due (at most `most` of them, so that no call's work is
-- unbounded; a hold left due only understates what is available, never overstates it).
local function expire_due(k, fig, now, most, channel)
  local due = redis.call('ZRANGEBYSCORE', k.expiries, '-inf', now, 'LIMIT', 0, most)
  for _, rid in ipairs(due) do
    if not end_hold(k, fig, rid, 'expire', channel) then redis.call('ZREM', k.expiries, rid) end
  end
  return #due
end

-- An item's figures, or nil where Redis holds no such item.
local function figures_of(k)
  local f = redis.call('HMGET', k.item, 'total', 'consumed', 'seq', 'fenced', 'gen', 'limit',
                       'held')
  if not f[1] then return nil end
  return {total = tonumber(f[1]), consumed = tonumber(f[2]), seq = tonumber(f[3] or 0),
          fenced = f[4] == '1', gen = f[5] or '', limit = tonumber(f[6] or ''),
          held = tonumber(f[7] or 0)}
end

-- Every line's figures (nil, and why, with the first line that is missing or fenced).
local function all_figures(lines)
  local figs = {}
  for i, k in ipairs(lines) do
    local fig = figures_of(k)
    if not fig then return nil, 'not_found', k.sku end
    if fig.fenced then return nil, 'fenced', k.sku end
    figs[i] = fig
  end
  return figs
end

-- The first line a hold of every line would break a rule on: nil, or its refusal, sku and
-- detail (what is available, or what the buyer may still take).
local function refusal_of(lines, figs, buyer)
  for i, k in ipairs(lines) do
    local fig, used = figs[i], 0
    if buyer ~= '' then used = tonumber(redis.call('HGET', k.buyers, buyer) or '0') end
    if fig.limit and buyer == '' then return 'buyer_required', k.sku, -1 end
    if fig.limit and used + k.qty > fig.limit then
      return 'limit_exceeded', k.sku, math.max(fig.limit - used, 0)
    end
    if k.qty > fig.total - fig.consumed - fig.held then
      return 'insufficient_stock', k.sku, fig.total - fig.consumed - fig.held
    end
  end
  return nil
end

-- Hold every line until `expires`: one 'hold' movement per line. `key`: the idempotency key of
-- the request that made the reservation, for its Reserved events ("" for none).
local function take(lines, figs, rid, buyer, expires, due, channel, key)
  for i, k in ipairs(lines) do
    local fig = figs[i]
    fig.held = fig.held + k.qty
    fig.seq = fig.seq + 1
    redis.call('HSET', k.item, 'held', fig.held, 'seq', fig.seq)
    redis.call('HSET', k.holds, rid, k.qty .. '|' .. expires .. '|' .. buyer)
    redis.call('ZADD', k.expiries, expires, rid)
    redis.call('ZADD', due, 'LT', expires, k.ns .. '\n' .. k.sku)
    if buyer ~= '' then redis.call('HINCRBY', k.buyers, buyer, k.qty) end
    count_hold(k, 'hold', k.qty)
    record(k.outbox, {seq = fig.seq, qty = k.qty, total = fig.total, consumed = fig.consumed,
                      kind = 'hold', ns = k.ns, sku = k.sku, gen = fig.gen, buyer = buyer,
                      held = fig.held, rid = rid, expires = expires})
    if channel ~= '' then
      local keyed = cjson.null
      if key ~= '' then keyed = key end
      redis.call('PUBLISH', channel, figures_event('Reserved', k, fig, {
        reservation_id = rid, qty = k.qty, idempotency_key = keyed}))
      if fig.total == fig.consumed + fig.held then
        redis.call('PUBLISH', channel, figures_event('SoldOut', k, fig, {}))
      end
    end
  end
end

-- Lines from KEYS (six per line, from `first`) and ARGV (sku and qty per line, from `at`).
local function lines_of(first, at, ns)
  local lines = {}
  for i = 0, (#KEYS - first + 1) / 6 - 1 do
    local key = first + 6 * i
    lines[#lines + 1] = {item = KEYS[key], outbox = KEYS[key + 1], buyers = KEYS[key + 2],
                         holds = KEYS[key + 3], expiries = KEYS[key + 4],
                         tally = KEYS[key + 5], ns = ns,
                         sku = ARGV[at + 2 * i], qty = tonumber(ARGV[at + 1 + 2 * i])}
  end
  return lines
end

-- Each line's figures, flat, for the caller: total, consumed, held, seq, gen, limit.
local function flat_figures(out, figs)
  for _, fig in ipairs(figs or {}) do
    for _, v in ipairs({fig.total, fig.consumed, fig.held, fig.seq, fig.gen, fig.limit or ''}) do
      out[#out + 1] = v
    end
  end
  return out
end
