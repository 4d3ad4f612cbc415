--[[
  Checks, and optionally repairs, the totals of a chunk of counters of one shard against
  expected = PostgreSQL value + pending delta + in-flight delta (if not yet in the ledger).

  KEYS[1] totals   KEYS[2] pending deltas     KEYS[3] pending tags
  KEYS[4] in-flight deltas   KEYS[5] in-flight tags   KEYS[6] in-flight meta
  KEYS[7] the shard lock
  ARGV[1] id of the in-flight batch the PostgreSQL values were read with ('' for none)
  ARGV[2] '1' if that batch is in the ledger (already in the PostgreSQL values), else '0'
  ARGV[3] '1' to repair, '0' to check only
  ARGV[4] the caller's lock token
  ARGV[5..] pairs: counter, PostgreSQL value

  Runs atomically, so increments arriving meanwhile cannot skew the comparison. A repair by a
  caller that no longer holds the lock returns {LOST_LOCK} and writes nothing: its PostgreSQL
  values may predate a counter deletion that took the shard meanwhile. Returns
  {BATCH_CHANGED} when a different batch is in flight than the caller read with (the caller
  reads again), else {OK, counter1, redis total1 ('' if missing), expected1, ...} for the
  counters that drifted, expected totals as decimal strings (ioredis parses integer replies near
  2^53 inexactly). A counter's pending (or in-flight) delta is the sum of its fields under every
  bucket tag the hash has (bucket-tags.ts); there are one or two tags, rarely more.
]]
--- @include "statuses"
--- @include "exact-string"
--- @include "inflight-batch"
--- @include "each-delta"
--- @include "holds-lock"

if ARGV[3] == '1' and not holdsLock(KEYS[7], ARGV[4]) then
  return { LOST_LOCK }
end
local batch = inflightBatch(KEYS[6]) or ''
if batch ~= ARGV[1] then
  return { BATCH_CHANGED }
end
local countInflight = ARGV[2] ~= '1'
local repair = ARGV[3] == '1'
local pendingTags = redis.call('SMEMBERS', KEYS[3])
local inflightTags = countInflight and redis.call('SMEMBERS', KEYS[5]) or {}

-- The sum of a counter's deltas in one deltas hash.
local sum
local function add(_, delta)
  sum = sum + tonumber(delta)
end
local function delta(deltas, tags, counter)
  sum = 0
  eachDelta(deltas, tags, counter, add)
  return sum
end

local result = { OK }
for i = 5, #ARGV, 2 do
  local counter = ARGV[i]
  local expected = tonumber(ARGV[i + 1]) + delta(KEYS[2], pendingTags, counter)
    + delta(KEYS[4], inflightTags, counter)
  local actual = redis.call('HGET', KEYS[1], counter)
  if tonumber(actual or 0) ~= expected then
    result[#result + 1] = counter
    result[#result + 1] = actual or ''
    local expectedText = exactString(expected)
    result[#result + 1] = expectedText
    if repair then
      redis.call('HSET', KEYS[1], counter, expectedText)
    end
  end
end
return result
