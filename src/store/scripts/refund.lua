-- tollgate refund: undo an admitted group when another group of the same
-- request denied. Same KEYS/ARGV layout as admit.lua; reply 1.
-- Nonces this admission stored (holding its attempt id, ARGV[5]) are
-- forgotten, GCRA TATs move back by cost × interval, counters and usage go
-- down by what was added (`count` by 1, `extra` by cost - 1), each keeping
-- its TTL. Keys that expired meanwhile are left alone. Lease ops ("R",
-- "Q") are left as they are: the slice they reserved stays with the
-- replica, which takes the request's units back into it.
local now = tonumber(ARGV[1])
local n, l, u = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 1, n do
  if redis.call('GET', KEYS[i]) == ARGV[5] then
    redis.call('DEL', KEYS[i])
  end
end
local at = 5 + n
for j = 1, l do
  local key = KEYS[n + j]
  local kind = ARGV[at + 1]
  local cost = tonumber(ARGV[at + 2])
  if kind == 'r' then
    local tat = redis.call('GET', key)
    if tat then
      local back = tonumber(tat) - cost * tonumber(ARGV[at + 3])
      if back <= now then
        redis.call('DEL', key)
      else
        redis.call('SET', key, string.format('%.0f', back), 'PX',
          string.format('%.0f', math.ceil((back - now) / 1000)))
      end
    end
  elseif kind == 'q' and cost > 0 and redis.call('EXISTS', key) == 1 then
    redis.call('DECRBY', key, cost)
  end
  if kind == 'R' then at = at + 9 elseif kind == 'Q' then at = at + 8 else at = at + 5 end
end
local ubase = at
for k = 1, u do
  local key = KEYS[n + l + k]
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'count', -1)
    local extra = tonumber(ARGV[ubase + (k - 1) * 2 + 1]) - 1
    if extra ~= 0 then
      redis.call('HINCRBY', key, 'extra', -extra)
    end
  end
end
return 1
