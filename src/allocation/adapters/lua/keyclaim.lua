-- A reservation key's claim in the key's slot, where the reservation itself lives with its
-- lines in another slot (a Redis Cluster cart whose lines share one slot): one key, one request.
-- KEYS[1] the reservation hash in the key's slot. ARGV: fingerprint, lines ("sku qty ..."),
-- buyer, ms to keep the claim.
-- Returns 1 (the key's own request: go on) or 0 (another request under the key).
local fp = redis.call('HGET', KEYS[1], 'fp')
if fp then
  if fp == ARGV[1] then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'claimed', 'fp', ARGV[1], 'lines', ARGV[2],
           'buyer', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
