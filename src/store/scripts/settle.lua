-- tollgate settle: hand back what the lease layer held — leases' unused
-- units and usage counted locally — once. Contract: src/store/scripts.rs.
--
-- KEYS = the settlement's marker, then return keys (r), then usage keys (u)
-- ARGV[1] = now (µs since the epoch), ARGV[2..3] = r, u, then
--   per return: kind, a, b, c, d
--     "r" (GCRA):  interval_us, top, base, used
--     "q" (quota): units, epoch, 0, 0
--   per usage: requests, cost, expire_at_s
-- Reply = {1} when applied, {0} when the marker says it was applied before.
--
-- A rate's unused units go back only while its TAT is still the lease's
-- top (and not past): TAT = min(top, max(base, now) + used × T)
-- (src/limits/lease.rs). A quota's go
-- back to its counter when this Redis granted them (same epoch), never
-- below zero. Usage: HINCRBY `count` by the requests and `extra` by cost −
-- requests; EXPIRE when this call created `count`.
local now = tonumber(ARGV[1])
local r, u = tonumber(ARGV[2]), tonumber(ARGV[3])
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', 600000) then
  return {0}
end

local epoch = nil
for i = 1, r do
  local key = KEYS[1 + i]
  local at = 3 + (i - 1) * 5
  local kind = ARGV[at + 1]
  local a, b = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  if kind == 'r' then
    if b > now and tonumber(redis.call('GET', key)) == b then
      local tat = math.min(math.max(tonumber(ARGV[at + 4]), now) + tonumber(ARGV[at + 5]) * a, b)
      if tat > now then
        redis.call('SET', key, string.format('%.0f', tat), 'PX',
          string.format('%.0f', math.ceil((tat - now) / 1000)))
      else
        redis.call('DEL', key)
      end
    end
  else
    if not epoch then
      local id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
      epoch = tonumber(string.sub(id, 1, 12), 16)
    end
    local count = tonumber(redis.call('GET', key))
    if count and b == epoch then
      local back = math.min(a, count)
      if back > 0 then
        redis.call('DECRBY', key, string.format('%.0f', back))
      end
    end
  end
end
local ubase = 3 + r * 5
for k = 1, u do
  local key = KEYS[1 + r + k]
  local at = ubase + (k - 1) * 3
  local requests = tonumber(ARGV[at + 1])
  local extra = tonumber(ARGV[at + 2]) - requests
  if redis.call('HINCRBY', key, 'count', requests) == requests then
    local ttl_s = tonumber(ARGV[at + 3]) - math.floor(now / 1000000)
    if ttl_s < 1 then ttl_s = 1 end
    redis.call('EXPIRE', key, string.format('%.0f', ttl_s))
  end
  if extra ~= 0 then
    redis.call('HINCRBY', key, 'extra', extra)
  end
end
return {1}
