-- Raise an item's "written" mark (its seq committed to the ledger) for the generation the item
-- has now; never lower it, never mark another generation, and never make a hash for an item
-- Redis does not hold (nor touch a key that is not a hash: a mark must never stop a writer).
-- KEYS[1] item hash; ARGV[1] generation, ARGV[2] seq.
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
if (redis.call('HGET', KEYS[1], 'gen') or '') ~= ARGV[1] then return 0 end
local seq = tonumber(ARGV[2])
if tonumber(redis.call('HGET', KEYS[1], 'written') or '0') < seq then
  redis.call('HSET', KEYS[1], 'written', seq)
end
return 1
