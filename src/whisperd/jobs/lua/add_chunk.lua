-- Store chunk n of a job (and its audio), if the job runs, split by ARGV[1], and n is next.
local state, worker, stored = unpack(
  redis.call('hmget', KEYS[1], 'state', 'worker', 'chunks_stored'))
if state ~= 'running' or worker ~= ARGV[1] then return 0 end
local lease = redis.call('get', KEYS[2])
if lease and lease ~= ARGV[1] then return 0 end
if (tonumber(stored) or 0) ~= tonumber(ARGV[2]) then return 0 end
redis.call('del', KEYS[3])
redis.call('hset', KEYS[3], 'state', 'queued', 'offset', ARGV[3], 'seconds', ARGV[4], 'attempts', 0)
redis.call('set', KEYS[4], ARGV[7])
redis.call('hset', KEYS[1], 'chunks_stored', tonumber(ARGV[2]) + 1, 'split_at', ARGV[5],
  'updated_at', ARGV[6])
return 1
