-- End an item's due holds for the sweeper, and keep its place in the due index right.
-- KEYS: item, outbox, buyers, holds, expiries, tally (as move.lua), the partition's due index.
-- ARGV: namespace, sku, events channel, the item's member in the index.
local k = {item = KEYS[1], outbox = KEYS[2], buyers = KEYS[3], holds = KEYS[4],
           expiries = KEYS[5], tally = KEYS[6], ns = ARGV[1], sku = ARGV[2]}
local f = redis.call('HMGET', k.item, 'total', 'consumed', 'seq', 'fenced', 'gen', 'held')
if f[1] and f[4] ~= '1' then
  local fig = {total = tonumber(f[1]), consumed = tonumber(f[2]), seq = tonumber(f[3] or 0),
               gen = f[5] or '', held = tonumber(f[6] or 0)}
  expire_due(k, fig, now_ms(), 1000, ARGV[3])
elseif f[4] == '1' then
  return 0  -- being rebuilt: its holds are the rebuild's; visit it again later
end
local next_due = redis.call('ZRANGE', k.expiries, 0, 0, 'WITHSCORES')
if #next_due == 0 then
  redis.call('ZREM', KEYS[7], ARGV[4])
else
  redis.call('ZADD', KEYS[7], next_due[2], ARGV[4])
end
return 1
