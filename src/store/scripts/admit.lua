-- tollgate admit: check every nonce and limit of one hash-tag group, and
-- consume them (plus usage) only if all pass. Contract: src/store/scripts.rs.
--
-- KEYS = nonce keys (n), then limit keys (l), then usage keys (u)
-- ARGV[1] = now (µs since the epoch), ARGV[2..4] = n, l, u,
-- ARGV[5] = the admission's attempt id (stored as each nonce's value), then
--   per nonce: ttl_ms
--   per limit: kind, cost, a, b, c
--     kind "r" (GCRA):  a = interval_us, b = burst, c = 0
--     kind "q" (quota): a = limit, b = window_end_us, c = expire_at_us
--   per usage: cost, expire_at_s
-- Reply = {status, replay_index, then per limit: allowed, remaining, reset_us, retry_after_us}
--   status 0 = admitted, 1 = replay (KEYS[replay_index] was remembered), 2 = exceeded,
--   3 = applied before: a nonce holds this attempt's id, so an earlier try of
--       this very call (retried by the client after a lost reply) already
--       wrote the group; nothing is done again, and no limit state is sent
--
-- Commands per admitted request, kept few because each costs Redis CPU:
-- a rate GET + SET PX; a quota GET, then SET PX when the window's counter
-- is new or INCRBY (which keeps the TTL it was created with) when it is
-- not; a usage hash one HINCRBY of `count` (+ one of `extra` when the cost
-- is not 1), and EXPIRE only when that HINCRBY created the field.
-- Keys do not expire while a script runs, so what GET saw still holds.
local now = tonumber(ARGV[1])
local n, l, u = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local attempt = ARGV[5]

for i = 1, n do
  local held = redis.call('GET', KEYS[i])
  if held then
    if held == attempt and attempt ~= '' then
      return {3, 0}
    end
    return {1, i}
  end
end

local reply = {0, 0}
-- Per limit: the new TAT (rate) or whether the counter existed (quota).
local seen = {}
local denied = false
local lbase = 5 + n
for j = 1, l do
  local key = KEYS[n + j]
  local at = lbase + (j - 1) * 5
  local kind, cost = ARGV[at + 1], tonumber(ARGV[at + 2])
  local a, b = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  local allowed, remaining, reset, retry
  if kind == 'r' then
    local capacity = b * a
    local tat = tonumber(redis.call('GET', key) or now)
    if tat < now then tat = now end
    local new_tat = tat + cost * a
    if new_tat - now <= capacity then
      allowed, remaining, reset, retry = 1, math.floor((capacity - (new_tat - now)) / a), new_tat - now, 0
      seen[j] = new_tat
    else
      local left = capacity - (tat - now)
      if left < 0 then left = 0 end
      allowed, remaining, reset, retry = 0, math.floor(left / a), tat - now, new_tat - now - capacity
    end
  else
    local stored = redis.call('GET', key)
    seen[j] = stored ~= false
    local count = tonumber(stored or '0')
    if count + cost <= a then
      allowed, remaining, reset, retry = 1, a - count - cost, b - now, 0
    else
      local left = a - count
      if left < 0 then left = 0 end
      allowed, remaining, reset, retry = 0, left, b - now, b - now
    end
  end
  if allowed == 0 then denied = true end
  local r = #reply
  reply[r + 1], reply[r + 2], reply[r + 3], reply[r + 4] = allowed, remaining, reset, retry
end

if denied then
  reply[1] = 2
  return reply
end

for i = 1, n do
  redis.call('SET', KEYS[i], attempt, 'PX', ARGV[5 + i])
end
for j = 1, l do
  local key = KEYS[n + j]
  local at = lbase + (j - 1) * 5
  local cost = tonumber(ARGV[at + 2])
  if ARGV[at + 1] == 'r' then
    local ttl_ms = math.ceil((seen[j] - now) / 1000)
    if ttl_ms < 1 then ttl_ms = 1 end
    redis.call('SET', key, string.format('%.0f', seen[j]), 'PX', string.format('%.0f', ttl_ms))
  elseif cost > 0 then
    if seen[j] then
      redis.call('INCRBY', key, cost)
    else
      local ttl_ms = math.ceil((tonumber(ARGV[at + 5]) - now) / 1000)
      if ttl_ms < 1 then ttl_ms = 1 end
      redis.call('SET', key, ARGV[at + 2], 'PX', string.format('%.0f', ttl_ms))
    end
  end
end
local ubase = lbase + l * 5
for k = 1, u do
  local key = KEYS[n + l + k]
  local at = ubase + (k - 1) * 2
  local extra = tonumber(ARGV[at + 1]) - 1
  if redis.call('HINCRBY', key, 'count', 1) == 1 then
    local ttl_s = tonumber(ARGV[at + 2]) - math.floor(now / 1000000)
    if ttl_s < 1 then ttl_s = 1 end
    redis.call('EXPIRE', key, string.format('%.0f', ttl_s))
  end
  if extra ~= 0 then
    redis.call('HINCRBY', key, 'extra', extra)
  end
end
return reply
