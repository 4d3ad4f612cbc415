--[[
  Reads the not-yet-flushed deltas of one shard whose fields match a glob pattern, for queries
  over many counters (usage by label, counter discovery).

  KEYS[1] pending deltas    KEYS[2] in-flight deltas
  KEYS[3] in-flight meta    KEYS[4] snapshot count
  ARGV[1] a MATCH pattern every wanted field matches (the caller keeps only those it asked for)

  Returns {snapshot count, in-flight batch id or '', its snapshot time (ms, '0' for none), P,
  then P pairs (field, pending delta), then pairs (field, in-flight delta)}, read atomically.
  HSCAN with MATCH filters inside Redis, so fields that do not match never become Lua strings;
  the hashes hold what arrived since the last flush, so a read costs O(fields pending).
]]

local inflight = redis.call('HMGET', KEYS[3], 'batch', 'snapshot')
local result = {
  tonumber(redis.call('GET', KEYS[4]) or 0),
  inflight[1] or '',
  inflight[2] or '0',
  0,
}

local function collect(hash)
  local before = #result
  -- A scan may return a field twice; its delta must count once.
  local seen = {}
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', hash, cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
    cursor = page[1]
    local entries = page[2]
    for i = 1, #entries, 2 do
      local field = entries[i]
      if not seen[field] then
        seen[field] = true
        result[#result + 1] = field
        result[#result + 1] = entries[i + 1]
      end
    end
  until cursor == '0'
  return (#result - before) / 2
end

result[4] = collect(KEYS[1])
collect(KEYS[2])
return result
