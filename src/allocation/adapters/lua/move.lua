-- Apply one movement (adjust, decrement, refund) to one item, atomically, with idempotency.
-- KEYS[1] item hash {total, consumed, held, seq, fenced, gen, limit}; KEYS[2] the partition's
-- outbox stream; KEYS[3] the item's buyers hash (buyer -> units bought and held); KEYS[4] its
-- holds (reservation id -> "qty|expires_ms|buyer"); KEYS[5] their expiries (a sorted set);
-- KEYS[6] the partition's tally of holds (lib.lua's count_hold); KEYS[7] (optional) the
-- idempotency record.
-- ARGV: kind, qty, fingerprint, ttl seconds, record ("1": append the movement to the outbox),
--       namespace, sku, idempotency key, events channel (recorded movements publish their
--       events there; "" for none), refusal ttl seconds (a refusal is remembered this long,
--       a success for the ttl), buyer ("" for none), the sale whose pass the caller holds
--       ("" for none: a decrement of an item a sale gates is then refused, not remembered).
-- The item's due holds end first (lib.lua), so what a sale sees available is never held by a
-- reservation that has expired.
-- The idempotency record is "fingerprint|status|total|consumed|seq|gen|remaining|limit|held"
-- (one an older script left may stop after consumed or after gen: a missing field replays as
-- none); gen is the item's generation (a new one each time it is loaded from the record);
-- remaining is what a buyer refused by the limit may still take (a refund refused as more
-- than the buyer's: their units); limit the item's limit per buyer then ("": none).
-- Returns {status, total, consumed, replayed, seq, gen, remaining (-1: none), limit, held}.
-- The rules mirror allocation.domain.rules; the events allocation.domain.events.of_movement (a
-- contract test holds them together).
local kind, qty, fp, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local recorded = ARGV[5] == '1'
local keyed = #KEYS > 6
local buyer = ARGV[11] or ''
local k = {item = KEYS[1], outbox = KEYS[2], buyers = KEYS[3], holds = KEYS[4],
           expiries = KEYS[5], tally = KEYS[6], ns = ARGV[6], sku = ARGV[7]}

if keyed then
  local prior = redis.call('GET', KEYS[7])
  if prior then
    local f = {}
    for field in string.gmatch(prior .. '|', '([^|]*)|') do f[#f + 1] = field end
    local status = f[2]
    if f[1] ~= fp then status = 'idempotency_key_reused' end
    return {status, tonumber(f[3]), tonumber(f[4]), 1, tonumber(f[5] or '') or 0, f[6] or '',
            tonumber(f[7] or '') or -1, f[8] or '', tonumber(f[9] or '') or 0}
  end
end

local figures = redis.call('HMGET', k.item, 'total', 'consumed', 'seq', 'fenced', 'gen',
                           'limit', 'held', 'gate')
if not figures[1] then
  return {'not_found', 0, 0, 0, 0, '', -1, '', 0}
end
local fig = {total = tonumber(figures[1]), consumed = tonumber(figures[2]),
             seq = tonumber(figures[3] or 0), gen = figures[5] or '',
             held = tonumber(figures[7] or 0)}
if figures[4] == '1' then  -- being rebuilt: the caller retries
  return {'fenced', fig.total, fig.consumed, 0, fig.seq, fig.gen, -1, '', fig.held}
end
if kind == 'decrement' and figures[8] and figures[8] ~= (ARGV[12] or '') then
  return {'pass_required', fig.total, fig.consumed, 0, fig.seq, fig.gen, -1, figures[6] or '',
          fig.held}  -- a sale gates it (sale_lib.lua): only its pass-holders buy
end
local channel = ARGV[9] or ''
if recorded then expire_due(k, fig, now_ms(), 1000, channel) end
local limit = tonumber(figures[6] or '')
local total, consumed, held = fig.total, fig.consumed, fig.held
local status, remaining = 'ok', -1
local new_total, new_consumed = total, consumed

if kind == 'adjust' then
  if total + qty < consumed + held then status = 'below_consumed'
  elseif qty > 0 and total + qty > MAX_TOTAL then status = 'total_exceeds_maximum'
  else new_total = total + qty end
elseif qty <= 0 then
  status = 'invalid_quantity'
elseif kind == 'decrement' then
  local used = 0
  if buyer ~= '' then used = tonumber(redis.call('HGET', k.buyers, buyer) or '0') end
  if limit and buyer == '' then
    status = 'buyer_required'
  elseif limit and used + qty > limit then
    status, remaining = 'limit_exceeded', math.max(limit - used, 0)
  elseif qty > total - consumed - held then
    status = 'insufficient_stock'
  else
    new_consumed = consumed + qty
    if buyer ~= '' then redis.call('HSET', k.buyers, buyer, used + qty) end
  end
elseif kind == 'refund' then
  local bought = 0
  if limit and buyer ~= '' then
    -- Where a limit keeps every buyer's units (bought and held together), a refund naming one
    -- returns no more than they bought: never another buyer's, nor units they only hold
    -- (those would come back to them again at the hold's end). Refunds are rare: the item's
    -- open holds are read here rather than a held count kept on every hold.
    bought = tonumber(redis.call('HGET', k.buyers, buyer) or '0')
    for _, hold in ipairs(redis.call('HVALS', k.holds)) do
      local qty_held, who = string.match(hold, '^(%d+)|[^|]*|(.*)$')
      if who == buyer then bought = bought - tonumber(qty_held) end
    end
  end
  if qty > consumed then
    status = 'refund_exceeds_consumed'
  elseif limit and buyer ~= '' and qty > bought then
    status, remaining = 'refund_exceeds_consumed', math.max(bought, 0)
  else
    new_consumed = consumed - qty
    give_back(k.buyers, buyer, qty)  -- the buyer's allowance back, as far as they used it
  end
else
  return redis.error_reply('unknown movement kind ' .. kind)
end

local seq = fig.seq
if status == 'ok' then
  seq = seq + 1
  redis.call('HSET', k.item, 'total', new_total, 'consumed', new_consumed, 'seq', seq)
  if recorded then
    record(k.outbox, {seq = seq, qty = qty, total = new_total, consumed = new_consumed,
                      kind = kind, ns = k.ns, sku = k.sku, gen = fig.gen, buyer = buyer,
                      held = held, rid = '', key = ARGV[8]})
    if channel ~= '' then
      local key = cjson.null
      if ARGV[8] ~= nil and ARGV[8] ~= '' then key = ARGV[8] end
      local after = {total = new_total, consumed = new_consumed, held = held, seq = seq}
      local extra = {idempotency_key = key}
      if buyer ~= '' then extra.buyer = buyer end
      if kind == 'adjust' then
        extra.delta = qty
        redis.call('PUBLISH', channel, figures_event('TotalAdjusted', k, after, extra))
      else
        extra.qty = qty
        redis.call('PUBLISH', channel, figures_event(
          (kind == 'decrement') and 'Decremented' or 'Refunded', k, after, extra))
      end
      if (kind == 'decrement' or (kind == 'adjust' and qty < 0))
          and new_total == new_consumed + held then
        redis.call('PUBLISH', channel, figures_event('SoldOut', k, after, {}))
      end
    end
  end
end
if keyed then
  local keep, kept_seq = ttl, 0
  if status == 'ok' then kept_seq = seq elseif ARGV[10] then keep = ARGV[10] end
  redis.call('SET', KEYS[7], fp .. '|' .. status .. '|' .. new_total .. '|' .. new_consumed ..
             '|' .. kept_seq .. '|' .. fig.gen .. '|' .. remaining .. '|' .. (figures[6] or '') ..
             '|' .. held, 'EX', keep)
end
return {status, new_total, new_consumed, 0, seq, fig.gen, remaining, figures[6] or '', held}
