-- Delete a lease held by ARGV[1]; 0 if another worker holds it, or none does.
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
