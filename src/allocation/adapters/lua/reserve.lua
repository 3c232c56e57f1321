-- A reservation's steps at its home: the reservation itself and the lines whose items share
-- its slot (on one Redis, all of them).
-- KEYS[1] the reservation hash {state, fp, lines, buyer, created, expires, first (the expiry
-- the hold was first answered with), reason, sku, detail}; KEYS[2] the home partition's due
-- index (items with holds, by next expiry: the sweeper's list); KEYS[3] the buyer's open
-- reservations (a sorted set of ids by expiry); then six keys per line: item hash, outbox,
-- buyers, holds, expiries, tally.
-- ARGV: op, reservation id, namespace, events channel, ttl ms (hold, extend), buyer ("" for
--       none), fingerprint (hold), ms to keep the reservation once ended, ms to keep a refusal,
--       whole ("1": these lines are the whole reservation; "0": a cart across slots, whose
--       other lines lib.lua's part.lua steps take), every line of the reservation as
--       "sku qty sku qty..." (hold), a refusal's reason, sku and detail (settle), the
--       idempotency key of the request (hold: its Reserved events carry it), the most open
--       reservations the buyer may have (hold; 0: no cap; -cap: at the cap, as counted in
--       another slot), then each home line's sku and qty, then (hold, optional) the sale whose
--       pass the caller holds ("" for none: a line of an item a sale gates is then refused).
-- The reservation's state decides who ends it: confirm, release and expiry each check and
-- change it in one step, so exactly one wins. A held reservation whose expiry has passed is
-- expired (its lines end as it is touched, as each item is, or by the sweeper).
-- A cart across slots: hold here as "pending", then the other slots (part.lua), then "settle"
-- it held, or refused (its home lines released). Confirm: "confirm_begin" here (held and in
-- time: "confirming"), pin the other slots' holds, then "confirm_end" here and confirm them,
-- or "confirm_abort" (a line had expired: so has the reservation, and every line ends so). A
-- crashed coordinator's steps are resumed by a retry of the same request; untouched, its holds
-- end at their expiry.
-- Returns {status, state, created, expires, sku, detail, replayed, figures...} where figures
-- are, per home line, {total, consumed, held, seq, gen, limit}. A hold refused as
-- too_many_open_reservations answers the cap as detail, and (where the buyer's open
-- reservations are counted here) now as created, the earliest of their expiries as expires.
local op, rid, ns, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, buyer, fp = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local keep, refusal_keep, whole = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10] == '1'
local res, due, open = KEYS[1], KEYS[2], KEYS[3]
local open_cap = tonumber(ARGV[16])
local lines = lines_of(4, 17, ns)
local now = now_ms()

local function answer(status, r, sku, detail, replayed, figs)
  return flat_figures({status, r.state or '', tonumber(r.created or 0),
                       tonumber(r.expires or 0), sku or '', tonumber(detail or -1) or -1,
                       replayed and 1 or 0}, figs)
end

local function stored()
  local flat = redis.call('HGETALL', res)
  if #flat == 0 then return nil end
  local r = {}
  for i = 1, #flat, 2 do r[flat[i]] = flat[i + 1] end
  return r
end

-- End every home line's hold with `kind` (the reservation's state is the caller's).
local function end_all(kind)
  local figs, status, sku = all_figures(lines)
  if not figs then return nil, status, sku end
  for i, k in ipairs(lines) do end_hold(k, figs[i], rid, kind, channel) end
  return figs
end

local function refuse(reason, sku, detail, figs)
  redis.call('HSET', res, 'state', 'refused', 'fp', fp, 'reason', reason, 'sku', sku,
             'detail', detail)
  redis.call('PEXPIRE', res, refusal_keep)
  return answer(reason, {}, sku, detail, false, figs)
end

local r = stored()

-- The buyer's open reservations less this one (ended, it no longer counts).
local function closed()
  if open ~= res and r and r.buyer and r.buyer ~= '' then redis.call('ZREM', open, rid) end
end

-- End every home line with `kind`, and the reservation as `state` (kept `kept` ms more).
local function finish(kind, state, status, kept)
  local figs, why, sku = end_all(kind)
  if not figs then return answer(why, r, sku) end
  r.state = state
  redis.call('HSET', res, 'state', state)
  closed()
  if kept then redis.call('PEXPIRE', res, kept) end
  return answer(status, r, nil, -1, false, figs)
end

if op == 'hold' then
  if r then
    if r.fp ~= fp then return answer('idempotency_key_reused', r) end
    if r.reason then return answer(r.reason, r, r.sku, r.detail, true) end
    -- A replay answers as the hold first did, whatever happened to the reservation since
    -- (a cart across slots still pending is resumed by it).
    local first = {state = r.state == 'pending' and 'pending' or 'held', created = r.created,
                   expires = r.first or r.expires}
    return answer('ok', first, nil, -1, true, all_figures(lines) or {})
  end
  local figs, status, sku = all_figures(lines)
  if not figs then  -- not remembered: being rebuilt, or a rebuild may bring the item back
    return answer(status, {}, sku)
  end
  if lines[1] and redis.call('HEXISTS', lines[1].holds, rid) == 1 then
    return answer('lost', {})  -- held before, and Redis lost the reservation: the ledger has it
  end
  local pass_of = ARGV[17 + 2 * #lines]  -- the sale whose pass the caller holds; nil: unchecked
  for _, k in ipairs(lines) do
    local gate = pass_of and redis.call('HGET', k.item, 'gate')
    if gate and gate ~= pass_of then  -- a sale gates it (sale_lib.lua): not remembered
      return answer('pass_required', {}, k.sku)
    end
  end
  for i, k in ipairs(lines) do expire_due(k, figs[i], now, 1000, channel) end
  -- At the cap the request is not processed, and not remembered under its key: once one of
  -- the buyer's reservations ends, the same request holds.
  if buyer ~= '' and open_cap < 0 then  -- counted in its own slot (claim.lua): at the cap
    return answer('too_many_open_reservations', {}, '', -open_cap, false, figs)
  end
  if buyer ~= '' and open_cap > 0 then
    redis.call('ZREMRANGEBYSCORE', open, '-inf', now)
    if redis.call('ZCARD', open) >= open_cap then
      local first = redis.call('ZRANGE', open, 0, 0, 'WITHSCORES')
      return answer('too_many_open_reservations', {created = now, expires = first[2]}, '',
                    open_cap, false, figs)
    end
  end
  local reason, at, detail = refusal_of(lines, figs, buyer)
  if reason then return refuse(reason, at, detail, figs) end
  local expires = now + ttl
  take(lines, figs, rid, buyer, expires, due, channel, ARGV[15])
  if buyer ~= '' and open_cap > 0 then
    redis.call('ZADD', open, expires, rid)
    if redis.call('PTTL', open) < ttl then redis.call('PEXPIRE', open, ttl) end
  end
  local state = whole and 'held' or 'pending'
  redis.call('HSET', res, 'state', state, 'fp', fp, 'lines', ARGV[11], 'buyer', buyer,
             'created', now, 'expires', expires, 'first', expires)
  -- Lifetimes from now (not at a moment): they keep to whatever clock now_ms reads.
  redis.call('PEXPIRE', res, ttl + keep)
  return answer('ok', {state = state, created = now, expires = expires}, nil, -1, false, figs)
end

if not r or r.state == 'refused' then return answer('not_found', {}) end

if op == 'settle' then  -- a cart across slots: every slot held (or one refused)
  if r.state ~= 'pending' then return answer('ok', r, r.sku, r.detail, true) end
  if ARGV[12] ~= '' then
    local figs = end_all('release')
    closed()
    return refuse(ARGV[12], ARGV[13], tonumber(ARGV[14]), figs)
  end
  r.state = 'held'
  redis.call('HSET', res, 'state', 'held')
  return answer('ok', r)
end

-- Its time is up: held (or never settled) and past its expiry, it is expired, whoever asks.
-- A confirm begun in time is finished or undone by the coordinator, not expired here.
local expired_now = nil  -- the lines' figures, where this call expired the reservation
if (r.state == 'held' or r.state == 'pending') and now >= tonumber(r.expires) then
  if op ~= 'get' then
    local figs, status, sku = end_all('expire')
    if not figs then return answer(status, r, sku) end
    redis.call('HSET', res, 'state', 'expired')
    closed()
    expired_now = figs
  end
  r.state = 'expired'
end

if op == 'get' then return answer('ok', r) end

if op == 'confirm' or op == 'confirm_end' then
  if r.state == 'confirmed' then return answer('ok', r, nil, -1, true, all_figures(lines) or {}) end
  if r.state ~= 'held' and not (op == 'confirm_end' and r.state == 'confirming') then
    return answer('reservation_' .. r.state, r)
  end
  for _, k in ipairs(lines) do
    if redis.call('HEXISTS', k.holds, rid) == 0 then
      -- A line's hold has ended (its item expired it): nothing is left to sell it from, so the
      -- reservation has expired, whatever its own record says.
      return finish('expire', 'expired', 'reservation_expired')
    end
  end
  return finish('confirm', 'confirmed', 'ok', keep)
end

if op == 'confirm_begin' then
  if r.state == 'confirmed' or r.state == 'confirming' then
    return answer('ok', r, nil, -1, r.state == 'confirmed')
  end
  if r.state ~= 'held' then return answer('reservation_' .. r.state, r) end
  r.state = 'confirming'
  redis.call('HSET', res, 'state', 'confirming')
  -- Pinned, as the other slots' holds are: no expiry takes them while the confirm goes on.
  expire_at(lines, rid, tonumber(r.expires) + tonumber(ARGV[5]), due)
  return answer('ok', r)
end

if op == 'confirm_abort' then  -- a line in another slot had expired: so has the reservation
  if r.state ~= 'confirming' then return answer('ok', r, nil, -1, true) end
  return finish('expire', 'expired', 'reservation_expired')
end

if op == 'release' then
  if r.state == 'confirmed' or r.state == 'confirming' then
    return answer('reservation_confirmed', r)
  end
  if r.state ~= 'held' and r.state ~= 'pending' then
    if expired_now then return answer('ok', r, nil, -1, false, expired_now) end
    return answer('ok', r, nil, -1, true, all_figures(lines) or {})
  end
  return finish('release', 'released', 'ok', keep)
end

if op == 'extend' then
  -- A reservation lives at most a day from its creation (API.md), however often extended.
  local LIFETIME_MS = 86400000
  if r.state ~= 'held' then return answer('reservation_' .. r.state, r) end
  local expires = now + ttl
  if expires > tonumber(r.created) + LIFETIME_MS then
    return answer('reservation_lifetime_exceeded', r)
  end
  local figs, status, sku = all_figures(lines)
  if not figs then return answer(status, r, sku) end
  extend_holds(lines, figs, rid, expires, due)
  r.expires = expires
  redis.call('HSET', res, 'expires', expires)
  redis.call('PEXPIRE', res, ttl + keep)
  return answer('ok', r, nil, -1, false, figs)
end

return redis.error_reply('unknown reservation step ' .. op)
