-- A reservation's every step, atomically over the reservation and all its lines' items.
-- KEYS[1] the reservation hash {state, fp, lines, buyer, created, expires, reason, sku, detail};
-- KEYS[2] the due index (items with holds, by their next expiry: the sweeper's list); then five
-- keys per line: item hash, outbox stream, buyers hash, holds hash, expiries sorted set.
-- ARGV: op ("hold", "confirm", "release", "extend", "get"), reservation id, namespace, events
--       channel ("" for none), ttl ms (hold, extend), buyer ("" for none), fingerprint (hold),
--       ms to keep the reservation after it ends, ms to keep a refusal, then each line's sku
--       and qty.
-- A hold takes every line or none. The reservation's state decides who ends it: confirm,
-- release and expiry each check and change it in this one step, so exactly one wins; a held
-- reservation whose expires_ms has passed is expired (its lines end as it is touched, or as
-- each item is, or by the sweeper).
-- Returns {status, state, created, expires, sku, detail, replayed, figures...} where figures
-- are, per line, {total, consumed, held, seq, gen, limit}.
local op, rid, ns, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, buyer, fp = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local keep, refusal_keep = tonumber(ARGV[8]), tonumber(ARGV[9])
local res, due = KEYS[1], KEYS[2]
local lines = {}
for i = 0, (#KEYS - 2) / 5 - 1 do
  local at = 3 + 5 * i
  lines[#lines + 1] = {item = KEYS[at], outbox = KEYS[at + 1], buyers = KEYS[at + 2],
                       holds = KEYS[at + 3], expiries = KEYS[at + 4], ns = ns,
                       sku = ARGV[10 + 2 * i], qty = tonumber(ARGV[11 + 2 * i])}
end
local now = now_ms()

local function figures_of(k)
  local f = redis.call('HMGET', k.item, 'total', 'consumed', 'seq', 'fenced', 'gen', 'limit',
                       'held')
  if not f[1] then return nil end
  return {total = tonumber(f[1]), consumed = tonumber(f[2]), seq = tonumber(f[3] or 0),
          fenced = f[4] == '1', gen = f[5] or '', limit = tonumber(f[6] or ''),
          held = tonumber(f[7] or 0)}
end

local function answer(status, r, sku, detail, replayed, figs)
  local out = {status, r.state or '', tonumber(r.created or 0), tonumber(r.expires or 0),
               sku or '', detail or -1, replayed and 1 or 0}
  for _, fig in ipairs(figs or {}) do
    for _, v in ipairs({fig.total, fig.consumed, fig.held, fig.seq, fig.gen, fig.limit or ''}) do
      out[#out + 1] = v
    end
  end
  return out
end

local function stored()
  local flat = redis.call('HGETALL', res)
  if #flat == 0 then return nil end
  local r = {}
  for i = 1, #flat, 2 do r[flat[i]] = flat[i + 1] end
  return r
end

-- Every line's figures now (and the first that is fenced or missing).
local function all_figures()
  local figs = {}
  for i, k in ipairs(lines) do
    local fig = figures_of(k)
    if not fig then return nil, 'not_found', k.sku end
    if fig.fenced then return nil, 'fenced', k.sku end
    figs[i] = fig
  end
  return figs
end

-- End every line's hold with `kind`; the reservation's state is the caller's.
local function end_all(kind)
  local figs, status, sku = all_figures()
  if not figs then return nil, status, sku end
  for i, k in ipairs(lines) do end_hold(k, figs[i], rid, kind, channel) end
  return figs
end

local r = stored()

if op == 'hold' then
  if r then
    if r.fp ~= fp then return answer('idempotency_key_reused', r) end
    local figs = all_figures() or {}
    return answer(r.reason or 'ok', r, r.sku, tonumber(r.detail or -1), true, figs)
  end
  local figs, status, sku = all_figures()
  if not figs then  -- not remembered: being rebuilt, or a rebuild may bring the item back
    return answer(status, {}, sku)
  end
  for i, k in ipairs(lines) do expire_due(k, figs[i], now, 16, channel) end
  for i, k in ipairs(lines) do  -- check every line before taking any
    local fig, refusal, detail = figs[i], nil, -1
    local used = 0
    if buyer ~= '' then used = tonumber(redis.call('HGET', k.buyers, buyer) or '0') end
    if fig.limit and buyer == '' then
      refusal = 'buyer_required'
    elseif fig.limit and used + k.qty > fig.limit then
      refusal, detail = 'limit_exceeded', math.max(fig.limit - used, 0)
    elseif k.qty > fig.total - fig.consumed - fig.held then
      refusal, detail = 'insufficient_stock', fig.total - fig.consumed - fig.held
    end
    if refusal then
      redis.call('HSET', res, 'state', 'refused', 'fp', fp, 'reason', refusal, 'sku', k.sku,
                 'detail', detail)
      redis.call('PEXPIRE', res, refusal_keep)
      return answer(refusal, {}, k.sku, detail, false, figs)
    end
  end
  local expires = now + ttl
  local listed = {}
  for i, k in ipairs(lines) do
    local fig = figs[i]
    fig.held = fig.held + k.qty
    fig.seq = fig.seq + 1
    redis.call('HSET', k.item, 'held', fig.held, 'seq', fig.seq)
    redis.call('HSET', k.holds, rid, k.qty .. '|' .. expires .. '|' .. buyer)
    redis.call('ZADD', k.expiries, expires, rid)
    redis.call('ZADD', due, 'LT', expires, ns .. '\n' .. k.sku)
    if buyer ~= '' then redis.call('HINCRBY', k.buyers, buyer, k.qty) end
    record(k.outbox, {seq = fig.seq, qty = k.qty, total = fig.total, consumed = fig.consumed,
                      kind = 'hold', ns = ns, sku = k.sku, gen = fig.gen, buyer = buyer,
                      held = fig.held, rid = rid, expires = expires})
    if channel ~= '' then
      redis.call('PUBLISH', channel, figures_event('Reserved', k, fig,
                                                   {reservation_id = rid, qty = k.qty}))
    end
    listed[#listed + 1] = k.sku .. ' ' .. k.qty
  end
  redis.call('HSET', res, 'state', 'held', 'fp', fp, 'lines', table.concat(listed, ' '),
             'buyer', buyer, 'created', now, 'expires', expires)
  redis.call('PEXPIREAT', res, expires + keep)
  return answer('ok', {state = 'held', created = now, expires = expires}, nil, -1, false, figs)
end

if not r or r.state == 'refused' then return answer('not_found', {}) end
if r.state == 'held' and now >= tonumber(r.expires) then
  -- Its time is up: it is expired, whoever asks. End what its items have not ended yet.
  if op ~= 'get' then
    local figs, status, sku = end_all('expire')
    if not figs then return answer(status, r, sku) end
  end
  r.state = 'expired'
  if op ~= 'get' then redis.call('HSET', res, 'state', 'expired') end
end

if op == 'get' then return answer('ok', r) end

if op == 'confirm' then
  if r.state == 'confirmed' then return answer('ok', r, nil, -1, true, all_figures() or {}) end
  if r.state ~= 'held' then return answer('reservation_' .. r.state, r) end
  local figs, status, sku = end_all('confirm')
  if not figs then return answer(status, r, sku) end
  r.state = 'confirmed'
  redis.call('HSET', res, 'state', 'confirmed')
  redis.call('PEXPIRE', res, keep)
  return answer('ok', r, nil, -1, false, figs)
end

if op == 'release' then
  if r.state == 'confirmed' then return answer('reservation_confirmed', r) end
  if r.state ~= 'held' then return answer('ok', r, nil, -1, true, all_figures() or {}) end
  local figs, status, sku = end_all('release')
  if not figs then return answer(status, r, sku) end
  r.state = 'released'
  redis.call('HSET', res, 'state', 'released')
  redis.call('PEXPIRE', res, keep)
  return answer('ok', r, nil, -1, false, figs)
end

if op == 'extend' then
  if r.state ~= 'held' then return answer('reservation_' .. r.state, r) end
  local figs, status, sku = all_figures()
  if not figs then return answer(status, r, sku) end
  local expires = now + ttl
  for _, k in ipairs(lines) do
    local value = redis.call('HGET', k.holds, rid)
    if value then
      local qty, _, who = parse_hold(value)
      redis.call('HSET', k.holds, rid, qty .. '|' .. expires .. '|' .. who)
      redis.call('ZADD', k.expiries, expires, rid)
    end
  end
  r.expires = expires
  redis.call('HSET', res, 'expires', expires)
  redis.call('PEXPIREAT', res, expires + keep)
  return answer('ok', r, nil, -1, false, figs)
end

return redis.error_reply('unknown reservation step ' .. op)
