--[[
  Reads the totals of counters of one shard.

  KEYS[1] epoch marker   KEYS[2] totals
  ARGV    counters

  Returns {NEEDS_REBUILD} when the epoch marker is missing (the totals would lack the
  PostgreSQL base), else {OK, total1, total2, ...} as decimal strings ('0' for a counter never
  incremented; strings because ioredis parses integer replies near 2^53 inexactly). One HGET
  per counter, not HMGET with unpack(ARGV): Lua cannot unpack more than about 8,000 values.
]]
--- @include "statuses"
--- @include "totals-lack-base"

if totalsLackBase(KEYS[1]) then
  return { NEEDS_REBUILD }
end

local result = { OK }
for i = 1, #ARGV do
  result[i + 1] = redis.call('HGET', KEYS[2], ARGV[i]) or '0'
end
return result
