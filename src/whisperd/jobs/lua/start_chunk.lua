-- Queued -> running on worker ARGV[1], with a lease of ARGV[2] ms, while the job runs.
if redis.call('hget', KEYS[1], 'state') ~= 'running' then return 0 end
if redis.call('hget', KEYS[2], 'state') ~= 'queued' then return 0 end
redis.call('hset', KEYS[2], 'state', 'running', 'worker', ARGV[1], 'started_at', ARGV[3])
redis.call('hincrby', KEYS[2], 'attempts', 1)
redis.call('set', KEYS[3], ARGV[1], 'PX', ARGV[2])
return 1
