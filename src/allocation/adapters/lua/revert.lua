-- Undo a movement whose database commit failed (synchronous durability), and forget its
-- idempotency record. KEYS[1] item hash; KEYS[2] (optional) the idempotency record.
-- ARGV: kind, qty.
local kind, qty = ARGV[1], tonumber(ARGV[2])
if #KEYS > 1 then redis.call('DEL', KEYS[2]) end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if kind == 'decrement' then
  redis.call('HINCRBY', KEYS[1], 'consumed', -qty)
elseif kind == 'refund' then
  redis.call('HINCRBY', KEYS[1], 'consumed', qty)
elseif kind == 'adjust' then
  redis.call('HINCRBY', KEYS[1], 'total', -qty)
end
redis.call('HINCRBY', KEYS[1], 'seq', -1)
return 1
