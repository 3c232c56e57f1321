-- Define a sale (or restore its terms from the record), keeping whatever queue it has.
-- KEYS[1] sale. ARGV: opens_at_ms, admit_factor, max_admitted (0: none), pass ttl ms, closed
-- ("1"/"0"), skus (space-separated).
redis.call('HSET', KEYS[1], 'opens_at', ARGV[1], 'factor', ARGV[2], 'max', ARGV[3],
           'ttl_ms', ARGV[4], 'closed', ARGV[5], 'skus', ARGV[6])
return 1
