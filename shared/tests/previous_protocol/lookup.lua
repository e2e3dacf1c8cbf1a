local entry = redis.call('HMGET', KEYS[1], 'b', 'e', 't')
local base = ARGV[1]
if entry[1] then
  local current = true
  for tag, token in string.gmatch(entry[3], '([^ =]+)=([^ ]+)') do
    if redis.call('GET', base .. 'v:' .. tag) ~= token then
      current = false
      break
    end
  end
  if current then
    return {'hit', entry[1], entry[2]}
  end
  redis.call('UNLINK', KEYS[1])
end
local out = {'miss'}
for i = 3, #ARGV do
  local key = base .. 'v:' .. ARGV[i]
  local version = redis.call('GET', key)
  if not version then
    redis.call('SET', key, ARGV[2])
    version = ARGV[2]
  end
  out[#out + 1] = version
end
return out
