--[[
  Releases the shard's flush lock if this holder still owns it.

  KEYS[1] lock   ARGV[1] the holder's token
  Returns 1 when released, 0 when the lock had expired or passed to another holder.
]]
--- @include "holds-lock"

if holdsLock(KEYS[1], ARGV[1]) then
  return redis.call('DEL', KEYS[1])
end
return 0
