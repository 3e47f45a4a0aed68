-- The split is over: the chunk count and duration; 1 if every chunk is done already (merge).
local state, worker, done = unpack(redis.call('hmget', KEYS[1], 'state', 'worker', 'chunks_done'))
if state ~= 'running' or worker ~= ARGV[1] then return -1 end
local lease = redis.call('get', KEYS[2])
if lease and lease ~= ARGV[1] then return -1 end
redis.call('hset', KEYS[1], 'chunks', ARGV[2], 'duration', ARGV[3], 'updated_at', ARGV[4])
redis.call('del', KEYS[3])
if (tonumber(done) or 0) >= tonumber(ARGV[2]) then return 1 end
return 0
