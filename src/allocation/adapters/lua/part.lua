-- A cart's lines in a slot other than its reservation's (a Redis Cluster): one step over them,
-- all or none, idempotent by reservation id. reserve.lua's steps at the home decide; these
-- follow.
-- KEYS: the slot's due index, then six keys per line (item hash, outbox, buyers, holds,
-- expiries, tally). ARGV: op, reservation id, namespace, events channel, expiry ms (hold: when
-- the holds end; pin: hold them at least this long; unpin, extend: their expiry now), buyer (""
-- for none), the idempotency key of the request (hold), then each line's sku and qty.
-- Ops: "hold" (every line or none; again: a replay), "pin" (every hold still in time, so expiry
-- cannot take it while the confirm goes on; else "expired"), "unpin" (set the holds' expiry),
-- "extend" (the same as the buyer's extension: an 'extend' movement per line), "confirm",
-- "release", "expire" (end the holds still there).
-- Returns {status, sku, detail, figures...} (figures as reserve.lua's).
local op, rid, ns, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local expires, buyer = tonumber(ARGV[5]), ARGV[6]
local due = KEYS[1]
local lines = lines_of(2, 8, ns)
local now = now_ms()

local figs, status, sku = all_figures(lines)
if not figs then return {status, sku, -1} end

if op == 'hold' then
  if redis.call('HEXISTS', lines[1].holds, rid) == 1 then
    return flat_figures({'ok', '', -1}, figs)  -- held before: a replay
  end
  for i, k in ipairs(lines) do expire_due(k, figs[i], now, 1000, channel) end
  local reason, at, detail = refusal_of(lines, figs, buyer)
  if reason then return flat_figures({reason, at, detail}, figs) end
  take(lines, figs, rid, buyer, expires, due, channel, ARGV[7])
  return flat_figures({'ok', '', -1}, figs)
end

if op == 'pin' then
  for _, k in ipairs(lines) do
    local value = redis.call('HGET', k.holds, rid)
    if not value then return {'expired', k.sku, -1} end
    local _, until_ms = parse_hold(value)
    if now >= until_ms then return {'expired', k.sku, -1} end
  end
  op = 'unpin'  -- every hold in time: hold them all until the confirm is done
end

if op == 'unpin' then  -- not the buyer's: no movement, nothing for the ledger
  expire_at(lines, rid, expires, due)
  return flat_figures({'ok', '', -1}, figs)
end

if op == 'extend' then
  extend_holds(lines, figs, rid, expires, due)
  return flat_figures({'ok', '', -1}, figs)
end

if op == 'confirm' or op == 'release' or op == 'expire' then
  for i, k in ipairs(lines) do end_hold(k, figs[i], rid, op, channel) end
  return flat_figures({'ok', '', -1}, figs)
end

return redis.error_reply('unknown cart step ' .. op)
