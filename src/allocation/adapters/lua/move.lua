-- Apply one movement to one item, atomically, with idempotency.
-- KEYS[1] item hash {total, consumed, seq, fenced}; KEYS[2] the partition's outbox stream;
-- KEYS[3] (optional) the idempotency record.
-- ARGV: kind, qty, fingerprint, ttl seconds, record ("1": append the movement to the outbox),
--       namespace, sku, idempotency key, events channel (recorded movements publish their
--       events there; "" for none), refusal ttl seconds (a refusal is remembered this long,
--       a success for the ttl).
-- The idempotency record is "fingerprint|status|total|consumed|seq|gen" (before 0.8 without
-- seq and gen); gen is the item's generation (a new one each time it is loaded from the record).
-- Returns {status, total, consumed, replayed, seq, gen}.
-- The events mirror allocation.domain.events.of_movement; a contract test holds them together.
-- Returns {status, total, consumed, replayed, seq}. The rules mirror allocation.domain.rules.
local kind, qty, fp, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local record = ARGV[5] == '1'
local keyed = #KEYS > 2

if keyed then
  local prior = redis.call('GET', KEYS[3])
  if prior then
    local seen_fp, status, total, consumed, seen_seq, seen_gen =
      string.match(prior, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|?([^|]*)|?([^|]*)$')
    if seen_fp ~= fp then status = 'idempotency_key_reused' end
    return {status, tonumber(total), tonumber(consumed), 1, tonumber(seen_seq) or 0, seen_gen}
  end
end

local figures = redis.call('HMGET', KEYS[1], 'total', 'consumed', 'seq', 'fenced', 'gen')
if not figures[1] then
  return {'not_found', 0, 0, 0, 0, ''}
end
local total, consumed, seq = tonumber(figures[1]), tonumber(figures[2]), tonumber(figures[3] or 0)
local gen = figures[5] or ''
if figures[4] == '1' then
  return {'fenced', total, consumed, 0, seq, gen}  -- being rebuilt: the caller retries
end
local status = 'ok'
local new_total, new_consumed = total, consumed

if kind == 'adjust' then
  if total + qty < consumed then status = 'below_consumed' else new_total = total + qty end
elseif qty <= 0 then
  status = 'invalid_quantity'
elseif kind == 'decrement' then
  if qty > total - consumed then status = 'insufficient_stock' else new_consumed = consumed + qty end
elseif kind == 'refund' then
  if qty > consumed then status = 'refund_exceeds_consumed' else new_consumed = consumed - qty end
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
               string.format('%d %d %d %d %s %d %d %s|', seq, qty, new_total, new_consumed,
                             kind, #ARGV[6], #ARGV[7], gen) .. ARGV[6] .. ARGV[7] ..
                             (ARGV[8] or ''))
    local channel = ARGV[9] or ''
    if channel ~= '' then
      local key = cjson.null
      if ARGV[8] ~= nil and ARGV[8] ~= '' then key = ARGV[8] end
      local event = {namespace = ARGV[6], sku = ARGV[7], total = new_total,
                     consumed = new_consumed, available = new_total - new_consumed,
                     idempotency_key = key}
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
  redis.call('SET', KEYS[3], fp .. '|' .. status .. '|' .. new_total .. '|' .. new_consumed ..
             '|' .. kept_seq .. '|' .. gen, 'EX', keep)
end
return {status, new_total, new_consumed, 0, seq, gen}
