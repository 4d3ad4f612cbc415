--[[
  Applies a group of increments to one shard, in order, each one whole or not at all.

  KEYS[1] epoch marker      KEYS[2] totals            KEYS[3] pending deltas
  KEYS[4] pending tags      KEYS[5] pending-since     KEYS[6] pending new counters
  KEYS[7..] idempotency keys, referred to by index from ARGV

  ARGV[1] idempotency window, ms
  ARGV[2] T: bucket tags in the table that follows
  ARGV[3 .. 2 + T] the table of bucket tags (bucket-tags.ts); a pending field is tag .. counter
  then per increment 3 values: counter, delta, spec. The spec is the tag's number in the table,
  or for an increment with an idempotency key or a limit 'tag:keyIndex:limit:fingerprint'
  (keyIndex into KEYS, 0 for none; limit '' for none; fingerprint: the increment's parameters,
  kept as the idempotency key's value).

  Returns {NEEDS_REBUILD} and applies nothing when the epoch marker is missing: the totals
  would lack the PostgreSQL base. Otherwise {OK, status1, total1, status2, total2, ...} with
  status APPLIED, DUPLICATE, OVER_LIMIT, OVERFLOW or KEY_REUSED (the idempotency key was counted
  with other parameters) and the counter's total after the increment (unchanged unless
  APPLIED). A total is an integer reply below 10^15 in magnitude and a decimal
  string above: ioredis parses integer replies near 2^53 inexactly (it reads 9007199254740991
  as 9007199254740992), and formatting every total as a string costs more Redis time than two
  hash increments.

  Each applied increment costs two hash increments, its total and its pending delta, however
  many granularities are configured: this script is the hot path's Redis time. An increment
  that creates a counter's total also adds the counter to the pending new counters (once in the
  counter's life, and again only if its total comes back to 0): usage queries look up those and
  the counters PostgreSQL knows, instead of scanning every pending field.

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
local windowMs = ARGV[1]
local tagCount = tonumber(ARGV[2])
local tags = {}
for t = 1, tagCount do
  tags[t] = ARGV[2 + t]
end
local result = { OK }
local size = 1
local appliedAny = false

local i = 3 + tagCount
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
      status = APPLIED
    end
  else
    local keyIndex, limit, fingerprint
    tag, keyIndex, limit, fingerprint = string.match(spec, '^(%d+):(%d+):([^:]*):(.*)$')
    keyIndex = tonumber(keyIndex)
    local stored = redis.call('HGET', totals, counter)
    total = tonumber(stored or 0)
    local new = total + tonumber(delta)
    local seen = keyIndex > 0 and redis.call('GET', KEYS[keyIndex])
    if seen then
      if seen == fingerprint or seen == ANY_PARAMETERS then
        status = DUPLICATE
      else
        status = KEY_REUSED
      end
    elseif new > MAX or new < -MAX then
      status = OVERFLOW
    elseif limit ~= '' and new > tonumber(limit) then
      status = OVER_LIMIT
    else
      redis.call('HINCRBY', totals, counter, delta)
      redis.call('HINCRBY', pending, tags[tonumber(tag)] .. counter, delta)
      if not stored then
        redis.call('SADD', KEYS[6], counter)
      end
      if keyIndex > 0 then
        redis.call('SET', KEYS[keyIndex], fingerprint, 'PX', windowMs)
      end
      status = APPLIED
      total = new
    end
  end
  if status == APPLIED then appliedAny = true end

  result[size + 1] = status
  if total < EXACT_REPLY and total > -EXACT_REPLY then
    result[size + 2] = total
  else
    result[size + 2] = exactString(total)
  end
  size = size + 2
  i = i + 3
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

return result
