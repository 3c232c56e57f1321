-- A rebuild's steps over many items of one partition, in one call: a command per item costs
-- the caller far more than the work it asks of Redis, and a namespace Redis lost is down until
-- every item is back.
-- ARGV[1] the op:
-- "seqs": KEYS item hashes. Returns, for each item Redis holds, its position in KEYS, its seq
--   and its generation (nothing for one it lost: a lost batch answers an empty list).
-- "load": KEYS[1] the partition's due index, then the n items' hashes, their buyers keys,
--   their holds keys, their expiries keys, then the records of the k keys still in their
--   window. ARGV[2] the namespace, ARGV[3] the generation they are loaded under, ARGV[4..8] n,
--   and how many gated items g, buyers' rows u, holds h and keys k, then a column at a time
--   (an item column n long, a row column as long as its rows): the items' sku, total,
--   consumed, held, seq, limit ("" for none); the gated items' position among the n, the open
--   sale that gates it; the buyers' rows' item (its position), buyer, units; the holds' item,
--   reservation id, qty, buyer, expires ms; the keys' record, seconds left.
--   Each item is set as the record has it, its keys given back (a key Redis holds already
--   stays), its limit, buyers and holds replaced, its gate set where it has one, the figures
--   last (they unfence it).
local op = ARGV[1]

-- Commands with many arguments are sent a thousand at most (Lua's unpack has a limit).
local MOST = 1000

if op == 'seqs' then
  local out = {}
  for from = 1, #KEYS, MOST do
    local to = math.min(from + MOST - 1, #KEYS)
    -- Where Redis lost them all, one EXISTS says so (a command an item cost more than its
    -- look-up); else each hash is read (one may hold only a sale's gate: not an item).
    if redis.call('EXISTS', unpack(KEYS, from, to)) > 0 then
      for i = from, to do
        local f = redis.call('HMGET', KEYS[i], 'total', 'seq', 'gen')
        if f[1] then
          out[#out + 1] = i
          out[#out + 1] = tonumber(f[2] or 0)
          out[#out + 1] = f[3] or ''
        end
      end
    end
  end
  return out
end

local function add(fields, name, value)
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end

-- Run `command key [option] ...fields` for each run of rows of one item: `item(j)` the
-- row's item, `fields(j, out)` adds the row's fields to out.
local function by_item(command, option, rows, key_of, item, fields)
  local j = 1
  while j <= rows do
    local at, out = item(j), {option}
    repeat
      fields(j, out)
      j = j + 1
    until j > rows or item(j) ~= at or #out >= MOST
    redis.call(command, key_of(at), unpack(out))
  end
end

if op == 'load' then
  local ns, gen = ARGV[2], ARGV[3]
  local n, g, u, h, k = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]),
                        tonumber(ARGV[7]), tonumber(ARGV[8])
  local due = KEYS[1]
  -- Where each column starts, less one: ARGV[column + i] is row i's value.
  local sku, total, consumed, held, seq, limit = 8, 8 + n, 8 + 2 * n, 8 + 3 * n, 8 + 4 * n,
                                                 8 + 5 * n
  local g_item, g_sale = 8 + 6 * n, 8 + 6 * n + g
  local at = 8 + 6 * n + 2 * g
  local u_item, u_buyer, u_units = at, at + u, at + 2 * u
  at = at + 3 * u
  local h_item, h_rid, h_qty, h_buyer, h_expires = at, at + h, at + 2 * h, at + 3 * h, at + 4 * h
  local record, left = at + 5 * h, at + 5 * h + k
  local items, buyers, holds, expiries = 1, 1 + n, 1 + 2 * n, 1 + 3 * n
  local gates = {}
  for j = 1, g do gates[tonumber(ARGV[g_item + j])] = ARGV[g_sale + j] end

  -- The buyers, holds and expiries Redis may still have of the items: replaced.
  for from = buyers + 1, expiries + n, MOST do
    redis.call('DEL', unpack(KEYS, from, math.min(from + MOST - 1, expiries + n)))
  end
  for j = 1, k do
    redis.call('SET', KEYS[expiries + n + j], ARGV[record + j], 'EX', ARGV[left + j], 'NX')
  end
  by_item('HSET', nil, u, function(i) return KEYS[buyers + i] end,
          function(j) return tonumber(ARGV[u_item + j]) end,
          function(j, out) add(out, ARGV[u_buyer + j], ARGV[u_units + j]) end)
  local function hold_item(j) return tonumber(ARGV[h_item + j]) end
  by_item('HSET', nil, h, function(i) return KEYS[holds + i] end, hold_item, function(j, out)
    add(out, ARGV[h_rid + j], ARGV[h_qty + j] .. '|' .. ARGV[h_expires + j] .. '|' ..
                              ARGV[h_buyer + j])
  end)
  by_item('ZADD', nil, h, function(i) return KEYS[expiries + i] end, hold_item,
          function(j, out) add(out, ARGV[h_expires + j], ARGV[h_rid + j]) end)
  -- The sweeper's index: each item at its next expiry (LT: the earliest of its holds).
  by_item('ZADD', 'LT', h, function() return due end, function() return 0 end, function(j, out)
    add(out, ARGV[h_expires + j], ns .. '\n' .. ARGV[sku + hold_item(j)])
  end)
  for i = 1, n do
    local s = ARGV[seq + i]
    local fields = {'total', ARGV[total + i], 'consumed', ARGV[consumed + i], 'held',
                    ARGV[held + i], 'seq', s, 'fenced', 0, 'written', s}
    -- The limit and the gate (move.lua and reserve.lua refuse a movement of a gated item
    -- without that sale's pass) go with the figures. A gate the record has not stays: a sale
    -- that opened since the record was read may have set it (the rebuild reads the record
    -- again after the load, for a sale closed meanwhile).
    if ARGV[limit + i] == '' then redis.call('HDEL', KEYS[items + i], 'limit')
    else add(fields, 'limit', ARGV[limit + i]) end
    if gates[i] then add(fields, 'gate', gates[i]) end
    if gen ~= '' then add(fields, 'gen', gen) end
    redis.call('HSET', KEYS[items + i], unpack(fields))
  end
  return n
end

return redis.error_reply('unknown rebuild step ' .. tostring(op))
