-- A place among a buyer's open reservations, where they live in another cluster slot than the
-- reservation (reserve.lua counts them in the hold's step where they share it).
-- KEYS[1] the buyer's open reservations (ids by expiry). ARGV: reservation id, the cap, ttl ms.
-- Returns 2 (claimed now), 1 (claimed before: the same reservation) or 0 (the cap is reached).
local now = now_ms()
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 2
