--[[
  Removes counters from one shard's Redis, whole: their totals, their deltas pending and in
  flight (under every bucket tag), their places in the new-counter sets, and their quota
  usage. Run by a counter deletion (engine/deletion.ts) after PostgreSQL dropped their rows, by
  the holder of the shard lock, so no flush freezes or moves deltas meanwhile. Idempotency keys
  stay: a retry of an increment counted before the deletion is a duplicate, not a new count.

  KEYS[1] the shard lock        KEYS[2] totals
  KEYS[3] pending deltas        KEYS[4] pending tags
  KEYS[5] in-flight deltas      KEYS[6] in-flight tags      KEYS[7] in-flight meta
  KEYS[8] pending new counters  KEYS[9] in-flight new counters   KEYS[10] orphan counters
  KEYS[11] quota usage          KEYS[12] quota periods      KEYS[13] quota seeding markers
  ARGV[1] the caller's lock token   ARGV[2..] counters

  Returns {LOST_LOCK} and changes nothing unless the caller still holds the lock; otherwise
  {OK, the in-flight batch id or '', then the counters that had a total or a delta here}.
]]
--- @include "statuses"
--- @include "holds-lock"

if not holdsLock(KEYS[1], ARGV[1]) then
  return { LOST_LOCK }
end

local SEPARATOR = '\031'
local pendingTags = redis.call('SMEMBERS', KEYS[4])
local inflightTags = redis.call('SMEMBERS', KEYS[6])
local result = { OK, redis.call('HGET', KEYS[7], 'batch') or '' }

local function removeDeltas(deltasKey, tags, counter)
  local removed = 0
  for t = 1, #tags do
    removed = removed + redis.call('HDEL', deltasKey, tags[t] .. counter)
  end
  return removed
end

for i = 2, #ARGV do
  local counter = ARGV[i]
  local found = redis.call('HDEL', KEYS[2], counter)
    + removeDeltas(KEYS[3], pendingTags, counter)
    + removeDeltas(KEYS[5], inflightTags, counter)
  redis.call('SREM', KEYS[8], counter)
  redis.call('SREM', KEYS[9], counter)
  redis.call('SREM', KEYS[10], counter)
  local periods = redis.call('HGET', KEYS[12], counter)
  if periods then
    for period in string.gmatch(periods, '[^;]+') do
      redis.call('HDEL', KEYS[11], period .. SEPARATOR .. counter)
      redis.call('HDEL', KEYS[13], period .. SEPARATOR .. counter)
    end
    redis.call('HDEL', KEYS[12], counter)
  end
  if found > 0 then
    result[#result + 1] = counter
  end
end
return result
