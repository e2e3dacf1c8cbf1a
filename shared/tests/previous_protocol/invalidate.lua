local base = ARGV[1]
local unlinked = 0
for i = 2, #ARGV do
  local members_key = base .. 'm:' .. ARGV[i]
  local members = redis.call('SMEMBERS', members_key)
  for first = 1, #members, 256 do
    unlinked = unlinked + redis.call('UNLINK', unpack(members, first, math.min(first + 255, #members)))
  end
  redis.call('UNLINK', members_key, base .. 'v:' .. ARGV[i])
end
return unlinked
