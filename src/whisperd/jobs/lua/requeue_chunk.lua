-- Running -> queued: by its worker (ARGV[1]), or, with ARGV[1] empty, once its lease lapsed.
local state = redis.call('hget', KEYS[1], 'state')
if state ~= 'running' and state ~= 'queued' then return 0 end
local cstate, cworker = unpack(redis.call('hmget', KEYS[2], 'state', 'worker'))
if cstate ~= 'running' then return 0 end
local lease = redis.call('get', KEYS[3])
if ARGV[1] == '' then
  if lease then return 0 end
elseif cworker ~= ARGV[1] or (lease and lease ~= ARGV[1]) then
  return 0
end
redis.call('hset', KEYS[2], 'state', 'queued', 'error', ARGV[3], 'error_status', ARGV[4])
if tonumber(ARGV[2]) ~= 0 then redis.call('hincrby', KEYS[2], 'attempts', ARGV[2]) end
redis.call('del', KEYS[3])
return 1
