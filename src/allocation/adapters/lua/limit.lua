-- Set (ARGV[1] a number) or lift (ARGV[1] "") the limit per buyer of an item Redis holds;
-- nothing where it holds none (a rebuild loads the limit from the record). KEYS[1] item hash.
if redis.call('HEXISTS', KEYS[1], 'total') == 0 then return 0 end
if ARGV[1] == '' then redis.call('HDEL', KEYS[1], 'limit')
else redis.call('HSET', KEYS[1], 'limit', ARGV[1]) end
return 1
