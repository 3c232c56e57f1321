-- Apply one movement to one item, atomically, with idempotency.
-- KEYS[1] item hash {total, consumed, seq, fenced, gen, limit}; KEYS[2] the partition's outbox
-- stream; KEYS[3] the item's buyers hash (buyer -> units bought and held); KEYS[4] (optional)
-- the idempotency record.
-- ARGV: kind, qty, fingerprint, ttl seconds, record ("1": append the movement to the outbox),
--       namespace, sku, idempotency key, events channel (recorded movements publish their
--       events there; "" for none), refusal ttl seconds (a refusal is remembered this long,
--       a success for the ttl), buyer ("" for none).
-- The idempotency record is "fingerprint|status|total|consumed|seq|gen|remaining|limit" (before
-- 0.8 without the last four, before 0.9 without the last two); gen is the item's generation (a
-- new one each time it is loaded from the record); remaining is what a buyer refused by the
-- limit may still take; limit is the item's limit per buyer then ("": none).
-- The events mirror allocation.domain.events.of_movement; a contract test holds them together.
-- Returns {status, total, consumed, replayed, seq, gen, remaining (-1: none), limit ("")}. The rules mirror
-- allocation.domain.rules.
local kind, qty, fp, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local record = ARGV[5] == '1'
local keyed = #KEYS > 3
local buyer = ARGV[11] or ''

if keyed then
  local prior = redis.call('GET', KEYS[4])
  if prior then
    local f = {}
    for field in string.gmatch(prior .. '|', '([^|]*)|') do f[#f + 1] = field end
    local status = f[2]
    if f[1] ~= fp then status = 'idempotency_key_reused' end
    return {status, tonumber(f[3]), tonumber(f[4]), 1, tonumber(f[5] or '') or 0, f[6] or '',
            tonumber(f[7] or '') or -1, f[8] or ''}
  end
end

local figures = redis.call('HMGET', KEYS[1], 'total', 'consumed', 'seq', 'fenced', 'gen',
                           'limit')
if not figures[1] then
  return {'not_found', 0, 0, 0, 0, '', -1, ''}
end
local total, consumed, seq = tonumber(figures[1]), tonumber(figures[2]), tonumber(figures[3] or 0)
local gen = figures[5] or ''
if figures[4] == '1' then
  return {'fenced', total, consumed, 0, seq, gen, -1, ''}  -- being rebuilt: the caller retries
end
local limit = tonumber(figures[6] or '')
local status, remaining = 'ok', -1
local new_total, new_consumed = total, consumed

if kind == 'adjust' then
  if total + qty < consumed then status = 'below_consumed' else new_total = total + qty end
elseif qty <= 0 then
  status = 'invalid_quantity'
elseif kind == 'decrement' then
  local used = 0
  if buyer ~= '' then used = tonumber(redis.call('HGET', KEYS[3], buyer) or '0') end
  if limit and buyer == '' then
    status = 'buyer_required'
  elseif limit and used + qty > limit then
    status, remaining = 'limit_exceeded', math.max(limit - used, 0)
  elseif qty > total - consumed then
    status = 'insufficient_stock'
  else
    new_consumed = consumed + qty
    if buyer ~= '' then redis.call('HSET', KEYS[3], buyer, used + qty) end
  end
elseif kind == 'refund' then
  if qty > consumed then
    status = 'refund_exceeds_consumed'
  else
    new_consumed = consumed - qty
    if buyer ~= '' then  -- the buyer's allowance back, as far as they used it
      local used = tonumber(redis.call('HGET', KEYS[3], buyer) or '0')
      if used > qty then redis.call('HSET', KEYS[3], buyer, used - qty)
      elseif used > 0 then redis.call('HDEL', KEYS[3], buyer) end
    end
  end
else
  return redis.error_reply('unknown movement kind ' .. kind)
end

if status == 'ok' then
  seq = seq + 1
  redis.call('HSET', KEYS[1], 'total', new_total, 'consumed', new_consumed, 'seq', seq)
  if record then
    -- One field, numbers first, then the names by length: allocation.adapters.redis_outbox
    -- reads it (one field costs the ledger worker far less to parse than ten).
    redis.call('XADD', KEYS[2], '*', 'm',
               string.format('%d %d %d %d %s %d %d %s %d|', seq, qty, new_total, new_consumed,
                             kind, #ARGV[6], #ARGV[7], gen, #buyer) .. ARGV[6] .. ARGV[7] ..
                             buyer .. (ARGV[8] or ''))
    local channel = ARGV[9] or ''
    if channel ~= '' then
      local key = cjson.null
      if ARGV[8] ~= nil and ARGV[8] ~= '' then key = ARGV[8] end
      local event = {namespace = ARGV[6], sku = ARGV[7], total = new_total,
                     consumed = new_consumed, available = new_total - new_consumed,
                     idempotency_key = key}
      if buyer ~= '' then event.buyer = buyer end
      if kind == 'adjust' then
        event.event = 'TotalAdjusted'
        event.delta = qty
      else
        event.event = (kind == 'decrement') and 'Decremented' or 'Refunded'
        event.qty = qty
      end
      redis.call('PUBLISH', channel, cjson.encode(event))
      if kind == 'decrement' and new_total == new_consumed then
        redis.call('PUBLISH', channel, cjson.encode({event = 'SoldOut', namespace = ARGV[6],
          sku = ARGV[7], total = new_total, consumed = new_consumed, available = 0}))
      end
    end
  end
end
if keyed then
  local keep, kept_seq = ttl, 0
  if status == 'ok' then kept_seq = seq elseif ARGV[10] then keep = ARGV[10] end
  redis.call('SET', KEYS[4], fp .. '|' .. status .. '|' .. new_total .. '|' .. new_consumed ..
             '|' .. kept_seq .. '|' .. gen .. '|' .. remaining .. '|' .. (figures[6] or ''),
             'EX', keep)
end
return {status, new_total, new_consumed, 0, seq, gen, remaining, figures[6] or ''}
