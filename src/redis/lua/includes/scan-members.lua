-- Appends to `out` the members of set `key` that match the glob `pattern`, each once across
-- calls sharing `seen` (a scan may return a member twice).
local function scanMembers(key, pattern, seen, out)
  local cursor = '0'
  repeat
    local page = redis.call('SSCAN', key, cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = page[1]
    local members = page[2]
    for i = 1, #members do
      if not seen[members[i]] then
        seen[members[i]] = true
        out[#out + 1] = members[i]
      end
    end
  until cursor == '0'
end
