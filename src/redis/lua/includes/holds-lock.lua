-- Whether the shard lock is still held by `token` (not expired, not passed to another holder).
local function holdsLock(lockKey, token)
  return redis.call('GET', lockKey) == token
end
