-- Shared by every grpc-throttle bucket script: prepended to each one on load.
--
-- A bucket is one hash holding O(1) state:
--   tat  theoretical arrival time in microseconds of Redis time (see _gcra.py)
--   iv   microseconds per token at the rate in force when tat was written
--   eff  the shared effective rate (tokens/s), absent until someone sets it
--   ep   epoch, bumped whenever iv changes so older reservations cannot cancel
--   exp  when the key expires (microseconds), so that most writes skip PEXPIRE
--
-- Time is Redis's own TIME, so hosts whose clocks disagree share one schedule.
-- On Redis < 5 a script that calls TIME and then writes needs
-- redis.replicate_commands(); grpc-throttle targets Redis >= 6, where effects
-- replication is the default (and since 7 the only mode).
-- Numbers go out as strings: Redis would truncate Lua numbers to integers.

local EPS = 1e-3 -- microseconds; _gcra.EPSILON is 1e-9 s

local function fmt(x)
  return string.format('%.17g', x)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Load the bucket at the rate in force: the caller's configured rate, capped by
-- the shared effective rate. A change of rate carries the token level over.
local function load(key, now, rate, new_eff)
  local st = redis.call('HMGET', key, 'tat', 'iv', 'eff', 'ep', 'exp')
  local s = {tat = tonumber(st[1]) or now, eff = tonumber(st[3]), ep = tonumber(st[4]) or 0}
  s.exp = tonumber(st[5])
  if new_eff then
    s.eff = new_eff
    s.rate_changed = true
  end
  local r = rate
  if s.eff and s.eff < r then
    r = s.eff
  end
  s.iv = 1e6 / r
  local old_iv = tonumber(st[2])
  if old_iv ~= s.iv then
    if old_iv and s.tat > now then
      s.tat = now + (s.tat - now) * s.iv / old_iv
    end
    s.ep = s.ep + 1
    s.rate_changed = true
  end
  return s
end

-- Write the bucket back (only tat unless the rate changed). The key must live
-- for twice its refill time past tat, plus a minute so that a shared effective
-- rate outlives short pauses; 'exp' remembers the expiry set, which is pushed
-- a minute further only when it falls short, so most writes skip PEXPIRE.
local function store(key, s, now, capacity)
  local fields = {'tat', fmt(s.tat)}
  if s.rate_changed then
    fields = {'tat', fmt(s.tat), 'iv', fmt(s.iv), 'ep', fmt(s.ep)}
    if s.eff then
      fields[#fields + 1] = 'eff'
      fields[#fields + 1] = fmt(s.eff)
    end
  end
  local needed = math.max(s.tat, now) + 2 * capacity * s.iv + 60e6
  local exp = nil
  if not s.exp or s.exp < needed then
    exp = needed + 60e6
    fields[#fields + 1] = 'exp'
    fields[#fields + 1] = fmt(exp)
  end
  redis.call('HSET', key, unpack(fields))
  if exp then
    redis.call('PEXPIRE', key, math.ceil((exp - now) / 1000))
  end
end
