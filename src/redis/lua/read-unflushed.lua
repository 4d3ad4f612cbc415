--[[
  Reads one shard's not-yet-flushed deltas of a query's counters, after the query took its
  PostgreSQL snapshot (the protocol is in engine/usage-query.ts).

  KEYS[1] snapshot count     KEYS[2] in-flight meta
  KEYS[3] pending deltas     KEYS[4] pending tags     KEYS[5] pending new counters
  KEYS[6] in-flight deltas   KEYS[7] in-flight tags   KEYS[8] in-flight new counters
  KEYS[9] orphan counters
  ARGV[1] the snapshot count and ARGV[2] the in-flight batch ('' for none) read before the
          snapshot (read-batch-state.lua)
  ARGV[3] what the snapshot's ledger says of that batch: 'lacked' (its deltas are read),
          'applied', or 'refused' (counted as applied until an operator resolves it)
  ARGV[4] 'named': look up the counters of ARGV[6..] (those PostgreSQL's snapshot has) and the
          new and orphan counters matching the pattern ARGV[5];
          'scan': every field matching the pattern ARGV[5] (too many counters to name)

  What a flush did since ARGV[1..2] decides:
  - nothing: the pending deltas, and the in-flight ones if ARGV[3] is 'lacked';
  - acknowledged the batch the ledger has ('applied'; not a refused batch, which only an
    operator's resolve-batch acknowledges, maybe applying it after the snapshot): the pending
    deltas;
  - that, then one snapshot, whose batch is still in flight: the pending and in-flight deltas,
    the caller asking the snapshot's ledger about the new batch;
  - anything else (the caller starts over): {BATCH_CHANGED}.
  Returns {OK, in-flight batch id or '', its snapshot time (ms), P, P pairs (field, pending
  delta), then pairs (field, in-flight delta)}. Named, a hash is read by looking up each counter
  under each of its bucket tags (one or two tags, as a flush runs every interval), unless the
  hash has fewer fields than that: then its fields matching the pattern are scanned (backdated
  increments, or stalled flushes, pile up tags). So a hash costs at most its fields, plus the
  new and orphan counters; the caller keeps only the counters its selection takes.
]]
--- @include "statuses"
--- @include "each-delta"
--- @include "scan-members"

local count = tonumber(redis.call('GET', KEYS[1]) or 0)
local meta = redis.call('HMGET', KEYS[2], 'batch', 'snapshot')
local batch = meta[1] or ''
local before, batchBefore, verdict = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local readInflight
if count == before and batch == batchBefore then
  readInflight = verdict == 'lacked'
elseif count == before and batch == '' and verdict == 'applied' then
  readInflight = false
elseif count == before + 1 and batch ~= '' and batch ~= batchBefore and verdict == 'applied' then
  readInflight = true
else
  return { BATCH_CHANGED }
end
local result = { OK, batch, meta[2] or '0', 0 }

local function scanFields(hash, pattern)
  -- A scan may return a field twice; its delta must count once.
  local seen = {}
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', hash, cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = page[1]
    local entries = page[2]
    for i = 1, #entries, 2 do
      if not seen[entries[i]] then
        seen[entries[i]] = true
        result[#result + 1] = entries[i]
        result[#result + 1] = entries[i + 1]
      end
    end
  until cursor == '0'
end

local counters = {}
if ARGV[4] == 'named' then
  local seen = {}
  for i = 6, #ARGV do
    if not seen[ARGV[i]] then
      seen[ARGV[i]] = true
      counters[#counters + 1] = ARGV[i]
    end
  end
  for _, key in ipairs({ KEYS[5], KEYS[8], KEYS[9] }) do
    scanMembers(key, ARGV[5], seen, counters)
  end
end

local counter
local function add(tag, delta)
  result[#result + 1] = tag .. counter
  result[#result + 1] = delta
end

local function collect(deltas, tagSet)
  if ARGV[4] ~= 'named' then
    scanFields(deltas, ARGV[5])
    return
  end
  local tags = redis.call('SMEMBERS', tagSet)
  if #counters * #tags > redis.call('HLEN', deltas) then
    -- A field is a bucket tag, the separator (bucket-tags.ts), then the counter.
    scanFields(deltas, '*\31' .. ARGV[5])
    return
  end
  for i = 1, #counters do
    counter = counters[i]
    eachDelta(deltas, tags, counter, add)
  end
end

collect(KEYS[3], KEYS[4])
result[4] = (#result - 4) / 2
if readInflight then
  collect(KEYS[6], KEYS[7])
end
return result
