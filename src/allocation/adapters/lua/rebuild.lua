-- A rebuild's steps over many items of one partition, in one call: a command per item costs
-- the caller far more than the work it asks of Redis, and a namespace Redis lost is down until
-- every item is back.
-- ARGV[1] the op:
-- "seqs": KEYS item hashes. Returns each item's seq and generation, or -1 and "" where Redis
--   does not hold it.
-- "load": KEYS[1] the partition's due index, then four keys per item: item hash, buyers, holds,
--   expiries. ARGV[2] the namespace, then per item: sku, total, consumed, held, seq, gen,
--   limit ("" for none), how many buyers, how many holds, the buyers (name, units), the holds
--   (reservation id, qty, buyer, expires ms). Each item is set as the record has it, its
--   limit, buyers and holds replaced, the figures last (they unfence it).
local op = ARGV[1]

if op == 'seqs' then
  local out = {}
  for _, key in ipairs(KEYS) do
    local f = redis.call('HMGET', key, 'total', 'seq', 'gen')
    if f[1] then
      out[#out + 1] = tonumber(f[2] or 0)
      out[#out + 1] = f[3] or ''
    else
      out[#out + 1] = -1
      out[#out + 1] = ''
    end
  end
  return out
end

if op == 'load' then
  local ns, due, at = ARGV[2], KEYS[1], 3
  for i = 0, (#KEYS - 1) / 4 - 1 do
    local item, buyers, holds, expiries = KEYS[2 + 4 * i], KEYS[3 + 4 * i], KEYS[4 + 4 * i],
                                          KEYS[5 + 4 * i]
    local sku, seq, gen, limit = ARGV[at], ARGV[at + 4], ARGV[at + 5], ARGV[at + 6]
    local fields = {'total', ARGV[at + 1], 'consumed', ARGV[at + 2], 'held', ARGV[at + 3],
                    'seq', seq, 'fenced', 0, 'written', seq}
    local bought, held = tonumber(ARGV[at + 7]), tonumber(ARGV[at + 8])
    at = at + 9
    redis.call('DEL', buyers, holds, expiries)
    for _ = 1, bought do
      redis.call('HSET', buyers, ARGV[at], ARGV[at + 1])
      at = at + 2
    end
    for _ = 1, held do
      local rid, expires = ARGV[at], ARGV[at + 3]
      redis.call('HSET', holds, rid, ARGV[at + 1] .. '|' .. expires .. '|' .. ARGV[at + 2])
      redis.call('ZADD', expiries, expires, rid)
      redis.call('ZADD', due, 'LT', expires, ns .. '\n' .. sku)
      at = at + 4
    end
    if limit == '' then
      redis.call('HDEL', item, 'limit')
    else
      redis.call('HSET', item, 'limit', limit)
    end
    if gen ~= '' then
      fields[#fields + 1] = 'gen'
      fields[#fields + 1] = gen
    end
    redis.call('HSET', item, unpack(fields))
  end
  return #KEYS
end

return redis.error_reply('unknown rebuild step ' .. tostring(op))
