--[[
  Applies a group of increments to one shard, in order, each one whole or not at all.

  KEYS[1] epoch marker      KEYS[2] totals            KEYS[3] pending deltas
  KEYS[4] pending tags      KEYS[5] pending-since     KEYS[6] pending new counters
  KEYS[7] quota usage       KEYS[8] quota periods     KEYS[9] quota seeding markers
  KEYS[10] sequence
  KEYS[11..] idempotency keys, referred to by index from ARGV

  ARGV[1] idempotency window, ms
  ARGV[2] how long after its end a quota period stays listed, ms (the backdating window)
  ARGV[3] T: bucket tags in the table that follows
  ARGV[4 .. 3 + T] the table of bucket tags (bucket-tags.ts); a pending field is tag .. counter
  then per increment 3 values: counter, delta, spec. The spec is the tag's number in the table,
  or for an increment with an idempotency key or a limit
  'tag:keyIndex:flags:max:period:fingerprint': keyIndex into KEYS, 0 for none; flags 'c' for a
  check (decide, change nothing) and 's' for a soft limit (apply, the caller reports passing
  it); max the limit, '' for none; period '<startMs>,<endMs>' for a periodic limit, '' for a
  limit on the total; fingerprint the increment's parameters, kept as the idempotency key's
  value.

  A limit holds while an increment with delta ≥ 0 leaves its usage ≤ max (negative increments,
  refunds, always pass); the usage is the total, or for a periodic limit the counter's usage in
  the period: the hash `quota usage` keeps it whole (PostgreSQL's part included) for the
  periods of `quota periods`, counter → '<start>,<end>;...', seeded by begin-/finish-quota-seed
  .lua. Every applied increment of such a counter adds to each listed period holding its
  smallest bucket's start, and drops the periods that ended ARGV[2] or more before it (no
  increment can reach them any more). A periodic entry
  whose period is not seeded (no usage, or a seed under way) returns NEEDS_SEED and changes
  nothing.

  Returns {NEEDS_REBUILD} and applies nothing when the epoch marker is missing: the totals
  would lack the PostgreSQL base. Otherwise {OK, status1, total1, status2, total2, ..., then the
  period usage of each periodic entry, in order ('' for NEEDS_SEED), then the shard's sequence}
  with status APPLIED,
  ALLOWED (a check that would apply), DUPLICATE, OVER_LIMIT, OVERFLOW, KEY_REUSED (the
  idempotency key was counted with other parameters) or NEEDS_SEED, and the counter's total
  after the increment (unchanged unless APPLIED). A value is an integer reply below 10^15 in
  magnitude and a decimal string above: ioredis parses integer replies near 2^53 inexactly (it
  reads 9007199254740991 as 9007199254740992), and formatting every total as a string costs
  more Redis time than two hash increments.

  Each applied increment costs two hash increments, its total and its pending delta, however
  many granularities are configured: this script is the hot path's Redis time. In a shard with
  quotas, one HGET of the counter's periods more (none in a shard without: one EXISTS per
  call). An increment that creates a counter's total also adds the counter to the pending new
  counters (once in the counter's life, and again only if its total comes back to 0): usage
  queries look up those and the counters PostgreSQL knows, instead of scanning every pending
  field.

  The sequence counts the calls that applied something, so that a shard that goes back in time
  (a failover to a replica that was behind, an AOF restart that lost its last second) is
  noticed by a process that saw a later value (engine/increments.ts); 0 when nothing applied.
  A new sequence starts at the server's time in ms × 1000, above any earlier one (a wiped
  shard, already reported by its rebuild, is then not reported again).

  Totals stay within ±(2^53−1) and so does each delta: their sum fits Redis's 64-bit integers,
  and as a Lua double it is exact within the range and never rounds back into it from outside,
  so the range check is exact.
]]
--- @include "statuses"
--- @include "totals-lack-base"
--- @include "server-time-ms"
--- @include "exact-string"

-- The value keys written before fingerprints were kept: a match for any parameters.
local ANY_PARAMETERS = '1'
local MAX = 9007199254740991
local EXACT_REPLY = 1e15

if totalsLackBase(KEYS[1]) then
  return { NEEDS_REBUILD }
end

local totals, pending = KEYS[2], KEYS[3]
local quotaUsage, quotaPeriods, quotaSeeding = KEYS[7], KEYS[8], KEYS[9]
local SEPARATOR = '\031'
local windowMs = ARGV[1]
local periodGraceMs = tonumber(ARGV[2])
local tagCount = tonumber(ARGV[3])
local tags = {}
-- Per tag, the start of its smallest bucket: the instant quota periods are matched against.
local instants = {}
for t = 1, tagCount do
  tags[t] = ARGV[3 + t]
  instants[t] = tonumber(string.match(tags[t], SEPARATOR .. '(-?%d+)' .. SEPARATOR .. '$'))
end
local quotas = redis.call('EXISTS', quotaPeriods) == 1
local result = { OK }
local size = 1
local usages = {}
local appliedAny = false

local function exactReply(value)
  if value < EXACT_REPLY and value > -EXACT_REPLY then return value end
  return exactString(value)
end

-- Adds an applied delta to the counter's periods that hold `instant`, and drops those that
-- ended periodGraceMs or more before it: no increment can be dated into them any more. Ended
-- periods stay until then because late increments are common (a month's last requests
-- reported after midnight): dropped at their end, each late one would seed its period again
-- while the current period's increments dropped it anew. begin-quota-seed.lua bounds the list.
local function addToPeriods(counter, instant, delta)
  local periods = redis.call('HGET', quotaPeriods, counter)
  if not periods or not instant then return end
  local kept, dropped = {}, false
  for period, startMs, endMs in string.gmatch(periods, '((-?%d+),(-?%d+))') do
    local field = period .. SEPARATOR .. counter
    local startAt, endAt = tonumber(startMs), tonumber(endMs)
    if endAt + periodGraceMs <= instant then
      dropped = true
      redis.call('HDEL', quotaUsage, field)
      redis.call('HDEL', quotaSeeding, field)
    else
      kept[#kept + 1] = period
      if startAt <= instant and instant < endAt then
        redis.call('HINCRBY', quotaUsage, field, delta)
      end
    end
  end
  if dropped then
    if #kept == 0 then
      redis.call('HDEL', quotaPeriods, counter)
    else
      redis.call('HSET', quotaPeriods, counter, table.concat(kept, ';'))
    end
  end
end

local i = 4 + tagCount
local last = #ARGV
while i <= last do
  local counter = ARGV[i]
  local delta = ARGV[i + 1]
  local spec = ARGV[i + 2]
  local status, total
  local tag = tonumber(spec)

  if tag then
    -- A plain increment: add first, check after. It can only leave the range if the total was
    -- already far from 0, so undoing it never leaves a field that was not there.
    total = redis.call('HINCRBY', totals, counter, delta)
    -- The total is the delta only if the field was just created, or held 0 (then adding the
    -- counter again is harmless).
    if total == tonumber(delta) then
      redis.call('SADD', KEYS[6], counter)
    end
    if total > MAX or total < -MAX then
      status = OVERFLOW
      total = redis.call('HINCRBY', totals, counter, -tonumber(delta))
    else
      redis.call('HINCRBY', pending, tags[tag] .. counter, delta)
      if quotas then addToPeriods(counter, instants[tag], delta) end
      status = APPLIED
    end
  else
    local keyIndex, flags, max, period, fingerprint
    tag, keyIndex, flags, max, period, fingerprint =
      string.match(spec, '^(%d+):(%d+):(%a*):(-?%d*):([-%d,]*):(.*)$')
    tag, keyIndex, delta = tonumber(tag), tonumber(keyIndex), tonumber(delta)
    local stored = redis.call('HGET', totals, counter)
    total = tonumber(stored or 0)
    local new = total + delta
    -- What the limit is on: the total, or the period's usage.
    local usage = total
    if period ~= '' then
      local field = period .. SEPARATOR .. counter
      usage = tonumber(redis.call('HGET', quotaUsage, field))
      if usage == nil or redis.call('HEXISTS', quotaSeeding, field) == 1 then
        status = NEEDS_SEED
      end
    end
    local seen = status == nil and keyIndex > 0 and redis.call('GET', KEYS[keyIndex])
    if status then
      -- NEEDS_SEED: decided once the period's usage is whole.
    elseif seen then
      if seen == fingerprint or seen == ANY_PARAMETERS then
        status = DUPLICATE
      else
        status = KEY_REUSED
      end
    elseif new > MAX or new < -MAX or usage + delta > MAX or usage + delta < -MAX then
      status = OVERFLOW
    elseif max ~= '' and delta >= 0 and usage + delta > tonumber(max)
        and not string.find(flags, 's', 1, true) then
      status = OVER_LIMIT
    elseif string.find(flags, 'c', 1, true) then
      status = ALLOWED
    else
      redis.call('HINCRBY', totals, counter, delta)
      redis.call('HINCRBY', pending, tags[tag] .. counter, delta)
      if not stored then
        redis.call('SADD', KEYS[6], counter)
      end
      if keyIndex > 0 then
        redis.call('SET', KEYS[keyIndex], fingerprint, 'PX', windowMs)
      end
      if quotas then addToPeriods(counter, instants[tag], delta) end
      status = APPLIED
      total = new
      usage = usage + delta
    end
    if period ~= '' then
      usages[#usages + 1] = status == NEEDS_SEED and '' or exactReply(usage)
    end
  end
  if status == APPLIED then appliedAny = true end

  result[size + 1] = status
  result[size + 2] = exactReply(total)
  size = size + 2
  i = i + 3
end
for u = 1, #usages do
  result[size + u] = usages[u]
end

if appliedAny then
  -- Every tag of the call goes in, even one whose increments were all refused: harmless, a
  -- reader finds no field under it.
  for t = 1, tagCount do
    redis.call('SADD', KEYS[4], tags[t])
  end
  if redis.call('EXISTS', KEYS[5]) == 0 then
    redis.call('SET', KEYS[5], serverTimeMs())
  end
end

local sequence = 0
if appliedAny then
  sequence = redis.call('INCR', KEYS[10])
  if sequence == 1 then
    sequence = serverTimeMs() * 1000
    redis.call('SET', KEYS[10], string.format('%d', sequence))
  end
end
result[size + #usages + 1] = sequence

return result
