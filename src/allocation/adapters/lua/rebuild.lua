-- A rebuild's steps over many items of one partition, in one call: a command per item costs
-- the caller far more than the work it asks of Redis, and a namespace Redis lost is down until
-- every item is back.
-- ARGV[1] the op:
-- "seqs": KEYS item hashes. Returns each item's seq and generation, or -1 and "" where Redis
--   does not hold it.
-- "load": KEYS[1] the partition's due index, then per item its item hash, buyers, holds,
--   expiries and the records of its keys still in their window. ARGV[2] the namespace, then
--   per item: sku, total, consumed, held, seq, gen, limit ("" for none), how many buyers, how
--   many holds, how many keys, the open sale that gates it ("" for none), the buyers (name,
--   units), the holds (reservation id, qty, buyer, expires ms), the keys (record, seconds
--   left). Each item is set as the record has it, its keys given back (a key Redis holds
--   already stays), its limit, buyers and holds replaced, its gate set where it has one, the
--   figures last (they unfence it).
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

local function add(fields, name, value)
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end

if op == 'load' then
  local ns, due, at, k, items = ARGV[2], KEYS[1], 3, 2, 0
  while k <= #KEYS do
    local item, buyers, holds, expiries = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
    local sku, seq, gen, limit = ARGV[at], ARGV[at + 4], ARGV[at + 5], ARGV[at + 6]
    local fields = {'total', ARGV[at + 1], 'consumed', ARGV[at + 2], 'held', ARGV[at + 3],
                    'seq', seq, 'fenced', 0, 'written', seq}
    local bought, held, keyed = tonumber(ARGV[at + 7]), tonumber(ARGV[at + 8]),
                                tonumber(ARGV[at + 9])
    local gate = ARGV[at + 10]
    k, at, items = k + 4, at + 11, items + 1
    for _ = 1, keyed do
      redis.call('SET', KEYS[k], ARGV[at], 'EX', ARGV[at + 1], 'NX')
      k, at = k + 1, at + 2
    end
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
    -- The limit and the gate (move.lua and reserve.lua refuse a movement of a gated item
    -- without that sale's pass) go with the figures. A gate the record has not stays: a sale
    -- that opened since the record was read may have set it (the rebuild reads the record
    -- again after the load, for a sale closed meanwhile).
    if limit == '' then redis.call('HDEL', item, 'limit') else add(fields, 'limit', limit) end
    if gate ~= '' then add(fields, 'gate', gate) end
    if gen ~= '' then add(fields, 'gen', gen) end
    redis.call('HSET', item, unpack(fields))
  end
  return items
end

return redis.error_reply('unknown rebuild step ' .. tostring(op))
