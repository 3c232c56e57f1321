-- Put back a reservation Redis lost, as the ledger has it, unless one by that id is there again.
-- KEYS[1] the reservation hash. ARGV: state, fingerprint, lines ("sku qty ..."), buyer,
-- created ms, expires ms, keep until ms.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'fp', ARGV[2], 'lines', ARGV[3], 'buyer', ARGV[4],
           'created', ARGV[5], 'expires', ARGV[6])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[7]) - now_ms())  -- past it: gone at once
return 1
