-- Define a sale (or restore its terms from the record), keeping whatever queue it has.
-- KEYS: sale, buyers, outstanding, claims, passes, resolved, holds.
-- ARGV: opens_at_ms, admit_factor, max_admitted (0: none), pass ttl ms, closed ("1"/"0"), skus
-- (space-separated), namespace, sale, events channel ("" for none), a random incarnation id.
-- Where the sale has no terms in Redis (new, or Redis lost them), its queue starts again: every
-- key of it is dropped (what is left of a queue whose terms were lost is not to be trusted) and
-- the incarnation id is set. Tickets and passes carry it: those of another incarnation are no
-- longer this queue's (docs/adr/0046).
local was = redis.call('HGET', KEYS[1], 'closed')
if not was then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
  redis.call('HSET', KEYS[1], 'inc', ARGV[10])
end
redis.call('HSET', KEYS[1], 'opens_at', ARGV[1], 'factor', ARGV[2], 'max', ARGV[3],
           'ttl_ms', ARGV[4], 'closed', ARGV[5], 'skus', ARGV[6], 'ns', ARGV[7],
           'name', ARGV[8])
if ARGV[5] == '1' and was ~= '1' then
  sale_event(KEYS[1], ARGV[9], 'SaleClosed', {state = 'closed'})
end
return 1
