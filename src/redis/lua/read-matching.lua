--[[
  Reads the not-yet-flushed deltas of one shard whose fields hold every needle, for queries over
  many counters (usage by label, counter discovery).

  KEYS[1] pending deltas    KEYS[2] in-flight deltas
  KEYS[3] in-flight meta    KEYS[4] snapshot count
  ARGV    needles: plain substrings each returned field contains (none: every field)

  Returns {snapshot count, in-flight batch id or '', its snapshot time (ms, '0' for none), P,
  then P pairs (field, pending delta), then pairs (field, in-flight delta)}, read atomically.
  The needles only narrow the reply: the caller parses every field and keeps those it asked for.
  The hashes hold what arrived since the last flush, so a read costs O(fields pending).
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
  -- HGETALL, not HSCAN: a scan may return a field twice, and its delta would count twice.
  local entries = redis.call('HGETALL', hash)
  for i = 1, #entries, 2 do
    local field = entries[i]
    local wanted = true
    for n = 1, #ARGV do
      if not string.find(field, ARGV[n], 1, true) then
        wanted = false
        break
      end
    end
    if wanted then
      result[#result + 1] = field
      result[#result + 1] = entries[i + 1]
    end
  end
  return (#result - before) / 2
end

result[4] = collect(KEYS[1])
collect(KEYS[2])
return result
