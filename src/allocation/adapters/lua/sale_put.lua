-- Define a sale (or restore its terms from the record), keeping whatever queue it has.
-- KEYS[1] sale. ARGV: opens_at_ms, admit_factor, max_admitted (0: none), pass ttl ms, closed
-- ("1"/"0"), skus (space-separated), namespace, sale, events channel ("" for none).
local was = redis.call('HGET', KEYS[1], 'closed')
redis.call('HSET', KEYS[1], 'opens_at', ARGV[1], 'factor', ARGV[2], 'max', ARGV[3],
           'ttl_ms', ARGV[4], 'closed', ARGV[5], 'skus', ARGV[6], 'ns', ARGV[7],
           'name', ARGV[8])
if ARGV[5] == '1' and was ~= '1' then
  sale_event(KEYS[1], ARGV[9], 'SaleClosed', {state = 'closed'})
end
return 1
