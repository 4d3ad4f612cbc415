--[[
  Extends the shard's flush lock while its holder is still working.

  KEYS[1] lock   ARGV[1] the holder's token   ARGV[2] new TTL, ms
  Returns 1 when extended, 0 when the lock had expired or passed to another holder.
]]
--- @include "holds-lock"

if holdsLock(KEYS[1], ARGV[1]) then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
