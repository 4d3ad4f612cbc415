--[[
  Flush step 1: freezes the shard's pending deltas into the in-flight batch.

  KEYS[1] pending deltas    KEYS[2] pending tags      KEYS[3] pending-since
  KEYS[4] in-flight deltas  KEYS[5] in-flight tags    KEYS[6] in-flight meta
  KEYS[7] snapshot count    KEYS[8] pending new counters   KEYS[9] in-flight new counters
  KEYS[10] the shard lock
  ARGV[1] id for a new batch   ARGV[2] the caller's lock token

  An in-flight batch left by an earlier flush (crashed, or not yet acknowledged) is resumed, not
  replaced: returns {'resumed', its id, its snapshot time}. With nothing pending returns
  {'empty'}. Otherwise renames pending (deltas, tags, new counters) → in-flight (atomically, so
  no increment can fall between them) and returns {'created', ARGV[1], the snapshot time}. Snapshot times
  are Redis' clock in ms; the flush's ledger check compares them with the pruning horizon.

  Only the lock's holder creates a batch ({'lost-lock'} otherwise, nothing changed): a flusher
  that was paused past its lock's TTL may still apply the batch it holds (the ledger keeps that
  exact), but must not freeze new deltas under a process that now holds the shard, such as a
  counter deletion (engine/deletion.ts), which counts on no batch but the one in flight
  holding the deltas it removes.
]]
--- @include "server-time-ms"
--- @include "exact-string"
--- @include "holds-lock"

local existing = redis.call('HMGET', KEYS[6], 'batch', 'snapshot')
if existing[1] then
  return { 'resumed', existing[1], existing[2] or '0' }
end

if redis.call('EXISTS', KEYS[1]) == 0 then
  return { 'empty' }
end
if not holdsLock(KEYS[10], ARGV[2]) then
  return { 'lost-lock' }
end

local nowMs = serverTimeMs()
redis.call('RENAME', KEYS[1], KEYS[4])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('RENAME', KEYS[2], KEYS[5])
end
if redis.call('EXISTS', KEYS[8]) == 1 then
  redis.call('RENAME', KEYS[8], KEYS[9])
else
  -- One an older worker's acknowledge left behind belongs to no batch.
  redis.call('DEL', KEYS[9])
end
local since = redis.call('GET', KEYS[3]) or nowMs
redis.call('HSET', KEYS[6], 'batch', ARGV[1], 'since', since, 'snapshot', nowMs)
redis.call('DEL', KEYS[3])
redis.call('INCR', KEYS[7])
return { 'created', ARGV[1], exactString(nowMs) }
