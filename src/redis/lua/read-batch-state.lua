--[[
  Reads where one shard's flushes stand, before a query over many counters takes its
  PostgreSQL snapshot (engine/usage-query.ts, counter listings in engine/discovery.ts).

  KEYS[1] snapshot count     KEYS[2] in-flight meta
  KEYS[3] pending new counters   KEYS[4] in-flight new counters   KEYS[5] orphan counters
  ARGV[1] a MATCH pattern for new counters, or '' for none wanted

  Returns {snapshot count, in-flight batch id or '', its snapshot time (ms, '0' for none), then
  the new and orphan counters matching ARGV[1]}, read atomically. Any counter with a delta in
  Redis that is not among them was in PostgreSQL before this read.
]]
--- @include "scan-members"

local inflight = redis.call('HMGET', KEYS[2], 'batch', 'snapshot')
local result = { tonumber(redis.call('GET', KEYS[1]) or 0), inflight[1] or '', inflight[2] or '0' }
if ARGV[1] ~= '' then
  local seen = {}
  for k = 3, 5 do
    scanMembers(KEYS[k], ARGV[1], seen, result)
  end
end
return result
