--[[
  Finishes a seed begun by begin-quota-seed.lua: adds the period's usage as of the seed's read
  (PostgreSQL's flushed sum + the deltas not yet flushed then) to the accumulator, which holds
  every increment since, and removes the marker, so increments may check the usage.

  KEYS[1] quota usage   KEYS[2] quota seeding markers   KEYS[3] snapshot count
  ARGV[1] the usage field   ARGV[2] the seeder's nonce
  ARGV[3] the snapshot count the seed read   ARGV[4] the usage as of the read (decimal)

  Returns {OK} or, changing nothing, {BATCH_CHANGED} when a flush snapshotted since the
  read (PostgreSQL's sum may then hold deltas the read counted as unflushed) or the marker is
  no longer this seeder's (taken over, the period dropped, or the quota state cleared by a
  rebuild or repair): the seeder starts again.
]]
--- @include "statuses"

local marker = redis.call('HGET', KEYS[2], ARGV[1])
if not marker or string.match(marker, '^(.-)|') ~= ARGV[2] then
  return { BATCH_CHANGED }
end
if tonumber(redis.call('GET', KEYS[3]) or 0) ~= tonumber(ARGV[3]) then
  return { BATCH_CHANGED }
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[4])
return { OK }
