-- Apply one movement to one item, atomically, with idempotency.
-- KEYS[1] item hash {total, consumed}; KEYS[2] (optional) the idempotency record.
-- ARGV: kind, qty, fingerprint, ttl seconds, probe ("1": do not apply an allowed movement).
-- Returns {status, total, consumed, replayed}. The rules mirror allocation.domain.rules.
local kind, qty, fp, ttl, probe = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local keyed = #KEYS > 1

if keyed then
  local prior = redis.call('GET', KEYS[2])
  if prior then
    local seen_print, status, total, consumed = string.match(prior, '^(.-)|(.-)|(.-)|(.-)$')
    if seen_print ~= fp then status = 'idempotency_key_reused' end
    return {status, tonumber(total), tonumber(consumed), 1}
  end
end

local figures = redis.call('HMGET', KEYS[1], 'total', 'consumed')
if not figures[1] then
  return {'not_found', 0, 0, 0}
end
local total, consumed = tonumber(figures[1]), tonumber(figures[2])
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
  if probe == '1' then
    return {'pending', total, consumed, 0}
  end
  redis.call('HSET', KEYS[1], 'total', new_total, 'consumed', new_consumed)
end
if keyed then
  redis.call('SET', KEYS[2], fp .. '|' .. status .. '|' .. new_total .. '|' .. new_consumed,
             'EX', ttl)
end
return {status, new_total, new_consumed, 0}
