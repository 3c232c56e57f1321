-- An admitted place's pass: {state, expires_ms}, state "outstanding", "used", "expired" or
-- "none" (not admitted yet, or no such sale). Read only: a poll of an admitted ticket.
-- KEYS: sale, outstanding, passes. ARGV: place.
local ended = redis.call('HGET', KEYS[3], ARGV[1])
if ended then return {ended == 'x' and 'expired' or 'used', 0} end
local expires = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not expires then return {'none', 0} end
if tonumber(expires) <= now_ms() then return {'expired', tonumber(expires)} end
return {'outstanding', tonumber(expires)}
