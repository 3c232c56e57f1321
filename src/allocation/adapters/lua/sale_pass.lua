-- An admitted place's pass: {state, expires_ms}, state "outstanding", "used", "expired",
-- "none" (not admitted yet, or no such sale) or "other" (the ticket is of another incarnation
-- of the queue). Read only: a poll of an admitted ticket.
-- KEYS: sale, outstanding, passes. ARGV: place, the ticket's incarnation.
if redis.call('EXISTS', KEYS[1]) == 1 and not of_this_queue(KEYS[1], ARGV[2]) then
  return {'other', 0}
end
local ended = redis.call('HGET', KEYS[3], ARGV[1])
local kept = ended and string.sub(ended, 1, 1) == 'h'  -- by a hold: it does not expire
if ended and not kept then return {ended == 'x' and 'expired' or 'used', 0} end
local expires = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not expires then return {'none', 0} end
if kept then return {'outstanding', tonumber(expires)} end
if tonumber(expires) <= now_ms() then return {'expired', tonumber(expires)} end
return {'outstanding', tonumber(expires)}
