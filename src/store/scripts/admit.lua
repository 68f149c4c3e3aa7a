-- tollgate admit: check every nonce and limit of one hash-tag group, and
-- consume them (plus usage) only if all pass. Contract: src/store/scripts.rs.
--
-- KEYS = nonce keys (n), then limit keys (l), then usage keys (u)
-- ARGV[1] = now (µs since the epoch), ARGV[2..4] = n, l, u,
-- ARGV[5] = the admission's attempt id (stored as each nonce's value), then
--   per nonce: ttl_ms
--   per limit: kind, cost, then by kind
--     "r" (GCRA):  interval_us, burst, 0
--     "q" (quota): limit, window_end_us, expire_at_us
--     "R" (GCRA lease):  interval_us, burst, ends_at_us, want, prev_top, prev_base, prev_used
--     "Q" (quota lease): limit, window_end_us, expire_at_us, want, prev_units, prev_epoch
--   per usage: cost, expire_at_s
-- Reply = {status, replay_index, then per limit: allowed, remaining, reset_us, retry_after_us
--          and, for "R" and "Q", granted, base, top, epoch}
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
--
-- Leases (src/limits/lease.rs, mirrored here line by line): "R" and "Q"
-- pass when the request's cost fits, and then reserve a slice of up to
-- `want` units, at most an eighth of what is available. A rate's slice is
-- charged at the lease's end: TAT = max(TAT, now, ends_at) + granted × T.
-- The replica's previous lease on the key goes back first: a rate's when
-- the TAT is still that lease's top, a quota's when this Redis is the one
-- that granted it (the epoch, Redis's run_id cut to 48 bits).
local now = tonumber(ARGV[1])
local n, l, u = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local attempt = ARGV[5]
local SHARE = 8
local MAX_SLICE = 1073741824

for i = 1, n do
  local held = redis.call('GET', KEYS[i])
  if held then
    if held == attempt and attempt ~= '' then
      return {3, 0}
    end
    return {1, i}
  end
end

local epoch = nil
local function current_epoch()
  if not epoch then
    local id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
    epoch = tonumber(string.sub(id, 1, 12), 16)
  end
  return epoch
end

local function slice(want, cost, available)
  local s = math.min(math.floor(available / SHARE), want, MAX_SLICE)
  if s < cost then s = cost end
  return s
end

local reply = {0, 0}
-- Per limit: its ARGV offset, and what to write (a TAT, a count, or for a
-- quota the INCRBY amount when the counter exists).
local at_of, write, exists = {}, {}, {}
local denied = false
local at = 5 + n
for j = 1, l do
  local key = KEYS[n + j]
  local kind, cost = ARGV[at + 1], tonumber(ARGV[at + 2])
  local a, b = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  at_of[j] = at
  local allowed, remaining, reset, retry
  local lease = nil
  if kind == 'r' or kind == 'R' then
    local capacity = b * a
    local stored = tonumber(redis.call('GET', key))
    if kind == 'R' then
      -- A TAT in the past is no TAT (the key may outlive it a little).
      if stored and stored <= now then stored = nil end
      local prev_top = tonumber(ARGV[at + 7])
      if prev_top > 0 and stored == prev_top then
        local back = math.min(math.max(tonumber(ARGV[at + 8]), now) + tonumber(ARGV[at + 9]) * a, prev_top)
        if back > now then stored = back else stored = nil end
      end
    end
    local tat = stored or now
    if tat < now then tat = now end
    local new_tat = tat + cost * a
    if new_tat - now <= capacity then
      allowed, remaining, reset, retry = 1, math.floor((capacity - (new_tat - now)) / a), new_tat - now, 0
      if kind == 'R' then
        local granted = slice(tonumber(ARGV[at + 6]), cost, math.floor((capacity - (tat - now)) / a))
        local ends_at = math.max(tonumber(ARGV[at + 5]), tat)
        lease = {granted, stored or 0, ends_at + granted * a, 0}
        write[j] = lease[3]
      else
        write[j] = new_tat
      end
    else
      local left = capacity - (tat - now)
      if left < 0 then left = 0 end
      allowed, remaining, reset, retry = 0, math.floor(left / a), tat - now, new_tat - now - capacity
      if kind == 'R' then lease = {0, stored or 0, stored or 0, 0} end
    end
  else
    local stored = redis.call('GET', key)
    exists[j] = stored ~= false
    local count = tonumber(stored or '0')
    if kind == 'Q' then
      local units = tonumber(ARGV[at + 7])
      if units > 0 and exists[j] and tonumber(ARGV[at + 8]) == current_epoch() then
        count = math.max(count - units, 0)
      end
    end
    local base = count
    if count + cost <= a then
      allowed, remaining, reset, retry = 1, a - count - cost, b - now, 0
      if kind == 'Q' then
        local granted = slice(tonumber(ARGV[at + 6]), cost, a - count)
        lease = {granted, base, count + granted, current_epoch()}
        write[j] = count + granted - tonumber(stored or '0')
      else
        write[j] = cost
      end
    else
      local left = a - count
      if left < 0 then left = 0 end
      allowed, remaining, reset, retry = 0, left, b - now, b - now
      if kind == 'Q' then lease = {0, base, base, 0} end
    end
  end
  if allowed == 0 then denied = true end
  local r = #reply
  reply[r + 1], reply[r + 2], reply[r + 3], reply[r + 4] = allowed, remaining, reset, retry
  if lease then
    reply[r + 5], reply[r + 6], reply[r + 7], reply[r + 8] = lease[1], lease[2], lease[3], lease[4]
  end
  if kind == 'R' then at = at + 9 elseif kind == 'Q' then at = at + 8 else at = at + 5 end
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
  local jat = at_of[j]
  local kind = ARGV[jat + 1]
  if kind == 'r' or kind == 'R' then
    local ttl_ms = math.ceil((write[j] - now) / 1000)
    if ttl_ms < 1 then ttl_ms = 1 end
    redis.call('SET', key, string.format('%.0f', write[j]), 'PX', string.format('%.0f', ttl_ms))
  elseif write[j] ~= 0 then
    if exists[j] then
      redis.call('INCRBY', key, string.format('%.0f', write[j]))
    else
      local ttl_ms = math.ceil((tonumber(ARGV[jat + 5]) - now) / 1000)
      if ttl_ms < 1 then ttl_ms = 1 end
      redis.call('SET', key, string.format('%.0f', write[j]), 'PX', string.format('%.0f', ttl_ms))
    end
  end
end
local ubase = at
for k = 1, u do
  local key = KEYS[n + l + k]
  local uat = ubase + (k - 1) * 2
  local extra = tonumber(ARGV[uat + 1]) - 1
  if redis.call('HINCRBY', key, 'count', 1) == 1 then
    local ttl_s = tonumber(ARGV[uat + 2]) - math.floor(now / 1000000)
    if ttl_s < 1 then ttl_s = 1 end
    redis.call('EXPIRE', key, string.format('%.0f', ttl_s))
  end
  if extra ~= 0 then
    redis.call('HINCRBY', key, 'extra', extra)
  end
end
return reply
