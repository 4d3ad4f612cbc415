-- Calls visit(tag, delta) for each of a counter's fields in a deltas hash: one per bucket tag
-- the hash has fields under (bucket-tags.ts), one or two since a flush runs every interval.
local function eachDelta(deltasKey, tags, counter, visit)
  for t = 1, #tags do
    local delta = redis.call('HGET', deltasKey, tags[t] .. counter)
    if delta then visit(tags[t], delta) end
  end
end
