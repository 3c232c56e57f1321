-- A buyer joins a sale's queue: one number per buyer, the same again on a repeat.
-- KEYS: sale, buyers. ARGV: buyer, a random key for the pre-queue's order (used only by the
-- first script to run at or after the opening), the events channel ("" for none).
-- Returns {status, number, joined_at_ms, incarnation}: status "joined", "again", "closed" or
-- "missing" (no such sale in Redis: the caller restores its terms from the record and joins
-- again); the incarnation of the sale's queue (sale_put.lua) the number is of.
local sale, buyers, buyer = KEYS[1], KEYS[2], ARGV[1]
local closed = redis.call('HGET', sale, 'closed')
if not closed then return {'missing', 0, 0, ''} end
local inc = redis.call('HGET', sale, 'inc') or ''
local prior = redis.call('HGET', buyers, buyer)
if prior then
  local number, joined_at = string.match(prior, '^(%d+)|(%d+)$')
  return {'again', tonumber(number), tonumber(joined_at), inc}
end
if closed == '1' then return {'closed', 0, 0, inc} end
local now = now_ms()
open_if_due(sale, now, ARGV[2], ARGV[3] or '')
local number = redis.call('HINCRBY', sale, 'joined', 1) - 1
redis.call('HSET', buyers, buyer, number .. '|' .. now)
return {'joined', number, now, inc}
