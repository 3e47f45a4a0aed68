-- Running -> done with its segments; counts it in the job. 1 if it was the last (merge).
local state, total = unpack(redis.call('hmget', KEYS[1], 'state', 'chunks'))
if state ~= 'running' and state ~= 'queued' then return -1 end
local cstate, cworker = unpack(redis.call('hmget', KEYS[2], 'state', 'worker'))
if cstate ~= 'running' or cworker ~= ARGV[1] then return -1 end
local lease = redis.call('get', KEYS[4])
if lease and lease ~= ARGV[1] then return -1 end
redis.call('hset', KEYS[2], 'state', 'done', 'segments', ARGV[2], 'language', ARGV[4],
  'language_probability', ARGV[5], 'error', '', 'error_status', '')
redis.call('del', KEYS[3], KEYS[4])
local done = redis.call('hincrby', KEYS[1], 'chunks_done', 1)
redis.call('hincrbyfloat', KEYS[1], 'progress', ARGV[3])
redis.call('hset', KEYS[1], 'updated_at', ARGV[6])
if state == 'running' and total and total ~= '' and done >= tonumber(total) then return 1 end
return 0
