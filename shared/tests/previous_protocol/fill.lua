local base = ARGV[1]
local versions = {}
for i = 6, #ARGV, 2 do
  if redis.call('GET', base .. 'v:' .. ARGV[i]) ~= ARGV[i + 1] then
    return 0
  end
  versions[#versions + 1] = ARGV[i] .. '=' .. ARGV[i + 1]
end
redis.call('HSET', KEYS[1], 'b', ARGV[2], 'e', ARGV[3], 't', table.concat(versions, ' '))
redis.call('EXPIRE', KEYS[1], ARGV[4])
local members_ttl = tonumber(ARGV[5])
for i = 6, #ARGV, 2 do
  if ARGV[i] ~= 'all' then
    local members = base .. 'm:' .. ARGV[i]
    redis.call('SADD', members, KEYS[1])
    if redis.call('TTL', members) < members_ttl then
      redis.call('EXPIRE', members, members_ttl)
    end
  end
end
return 1
