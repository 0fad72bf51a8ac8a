-- Shared by every grpc-throttle bucket script: prepended to each one on load.
--
-- A bucket is one hash holding O(1) state (with limits=, their counts are
-- kept in a second hash: see _windows.lua):
--   tat  theoretical arrival time in microseconds of Redis time (see _gcra.py)
--   iv   microseconds per token at the rate in force when tat was written
--   eff  the shared effective rate (tokens/s), absent until someone sets it
--   ep   epoch, bumped whenever iv changes so older reservations cannot cancel
--   exp  when the key expires (microseconds), so that most writes skip PEXPIRE
--   rs   the last changes of iv, 'ep,when,old,new;...' (see retime)
--   mr   the replication ID of the master that last wrote it (see moved)
-- and the shared rate adaptation (_cubic.py), absent until the first change:
--   rd   the round, bumped on every decrease (one decrease per round)
--   wm   the recovery target (CUBIC's w_max), tokens/s
--   ld   when the last decrease happened (microseconds); '' once recovered
--   k    seconds from that decrease until the curve reaches wm
--   lm   the rate at the last decrease (CUBIC's W_last_max); '' once recovered
--
-- Time is Redis's own TIME, so hosts whose clocks disagree share one schedule.
-- On Redis < 5 a script that calls TIME and then writes needs
-- redis.replicate_commands(); grpc-throttle targets Redis >= 6, where effects
-- replication is the default (and since 7 the only mode).
-- Numbers go out as strings: Redis would truncate Lua numbers to integers.

local EPS = 1e-3 -- microseconds; _gcra.EPSILON is 1e-9 s
local MAX_TTL_MS = 1e15 -- ~31,700 years: longer than any key needs to live

local function fmt(x)
  return string.format('%.17g', x)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Carry one point of the schedule (a tat, a reservation's start or end) over
-- a change of interval at now, as _gcra.rescale does: on a slowdown what lies
-- ahead is stretched (the tokens queued are kept, spaced at the new rate); on
-- a speed-up, while slots handed out lie ahead, the tail stays where it is
-- and the next slot comes one new interval after the last of them; otherwise
-- the token level is kept. The instant a reservation becomes due is a point
-- with no burst behind it: carry it with capacity 0.
local function carry(t, now, old, new, capacity)
  if t <= now then
    return t
  end
  if new < old and t - capacity * old >= now then
    return t - capacity * (old - new)
  end
  return now + (t - now) * new / old
end

-- The changes of rate kept for waiters to catch up with (Reservation.due_in):
-- _gcra.RESCALES, which tests/test_redis_equivalence.py holds equal to this.
local RESCALES = 64

-- Put the rate in force (the caller's configured rate, capped by the shared
-- effective rate) into s.iv, carrying the schedule over, and remember the
-- change in 'rs' ('ep,when,old,new;...', the last RESCALES of them).
local function retime(s, now, rate, capacity)
  local r = rate
  if s.eff and s.eff < r then
    r = s.eff
  end
  local iv = 1e6 / r
  if iv ~= s.iv then
    if s.iv then
      s.tat = carry(s.tat, now, s.iv, iv, capacity)
      local kept = {}
      for entry in string.gmatch(redis.call('HGET', s.key, 'rs') or '', '[^;]+') do
        kept[#kept + 1] = entry
      end
      kept[#kept + 1] = table.concat({s.ep + 1, fmt(now), fmt(s.iv), fmt(iv)}, ',')
      s.rs = table.concat(kept, ';', math.max(1, #kept - RESCALES + 1))
    end
    s.iv = iv
    s.ep = s.ep + 1
    s.rate_changed = true
  end
end

-- A failover moves the key to a promoted replica whose copy of the schedule is
-- the old master's as of the promotion. Clients still on the old master keep
-- taking slots from their copy until they re-point, within a second (Sentinel:
-- _redis_wire.SENTINEL_RECHECK; a cluster client on its next error), so two
-- schedules run at once. A promoted replica takes a new replication ID and
-- keeps its old master's as master_replid2: the first script to find the key
-- last written under that ID takes the bucket as empty and pushes its
-- schedule on by MOVE_HOLD, past what the old master can hand out meanwhile
-- (held but full, a burst of `capacity` would follow the hold at once).
-- Every script records the master's ID when it changes (s.mr is set only
-- then, and every script that changes the state stores it). A key moved by
-- MIGRATE, or found on a restarted server, has another ID but not its
-- master's old one: it is not held. INFO costs the server about 10 us, a
-- third of a reserve's time inside Redis, so it is read once per CHECK_US per
-- key ('mc', when last read, on the key's master's clock; a time ahead of
-- this master's clock counts as due): a failover is noticed within CHECK_US
-- of the first call on the promoted replica.
local MOVE_HOLD_US = 1.1e6
local CHECK_US = 5e4

local function moved(s, stored, checked, now, capacity)
  if checked and checked <= now and now - checked < CHECK_US then
    return
  end
  s.mc = now
  local info = redis.pcall('INFO', 'replication')
  if type(info) ~= 'string' then -- an ACL user without +info: no hold
    return
  end
  local id = string.match(info, 'master_replid:(%w+)')
  if id and id ~= stored then
    if stored and stored == string.match(info, 'master_replid2:(%w+)') then
      s.tat = math.max(s.tat, now + capacity * s.iv) + MOVE_HOLD_US -- empty, then held: no burst after
    end
    s.mr = id
  end
end

-- Load the bucket at the rate in force. An effective rate set explicitly
-- (new_eff) holds until changed: set again, or lowered by a throttle signal.
local function load(key, now, rate, new_eff, capacity)
  local st = redis.call('HMGET', key, 'tat', 'iv', 'eff', 'ep', 'exp', 'rd', 'wm', 'ld', 'k', 'lm', 'mr', 'mc')
  local s = {tat = tonumber(st[1]) or now, iv = tonumber(st[2]), eff = tonumber(st[3]), ep = tonumber(st[4]) or 0}
  s.key = key
  s.exp, s.rd, s.wm, s.ld, s.k = tonumber(st[5]), tonumber(st[6]), tonumber(st[7]), tonumber(st[8]), tonumber(st[9])
  s.lm = tonumber(st[10])
  if new_eff then
    s.eff = new_eff
    s.rate_changed = true
    if s.ld or s.lm then -- no recovery from a rate set on purpose
      s.ld, s.lm = nil, nil
      s.curve_changed = true
    end
  end
  retime(s, now, rate, capacity)
  moved(s, st[11] or nil, tonumber(st[12]), now, capacity)
  return s
end

-- Write the bucket back (only tat unless the rate or the curve changed). The
-- key must live for twice its refill time past tat, plus a minute so that a
-- shared effective rate outlives short pauses; 'exp' remembers the expiry set,
-- which is pushed a minute further only when it falls short, so most writes
-- skip PEXPIRE.
local function store(key, s, now, capacity)
  local needed = math.max(s.tat, now) + 2 * capacity * s.iv + 60e6
  if not (s.rate_changed or s.curve_changed or s.mr) and s.exp and s.exp >= needed then
    if s.mc then -- INFO was read (see moved)
      redis.call('HSET', key, 'tat', fmt(s.tat), 'mc', fmt(s.mc))
    else
      redis.call('HSET', key, 'tat', fmt(s.tat)) -- the common case: nothing else to write
    end
    return
  end
  local fields = {'tat', fmt(s.tat)}
  if s.rate_changed or s.curve_changed then
    fields = {'tat', fmt(s.tat), 'iv', fmt(s.iv), 'ep', fmt(s.ep)}
    if s.rs then
      fields[#fields + 1] = 'rs'
      fields[#fields + 1] = s.rs
    end
    if s.eff then
      fields[#fields + 1] = 'eff'
      fields[#fields + 1] = fmt(s.eff)
    end
    if s.curve_changed then
      local ld = ''
      if s.ld then
        ld = fmt(s.ld)
      end
      local lm = ''
      if s.lm then
        lm = fmt(s.lm)
      end
      for _, v in ipairs({'rd', fmt(s.rd or 0), 'wm', fmt(s.wm or s.eff), 'ld', ld, 'k', fmt(s.k or 0), 'lm', lm}) do
        fields[#fields + 1] = v
      end
    end
  end
  if s.mr then
    fields[#fields + 1] = 'mr'
    fields[#fields + 1] = s.mr
  end
  if s.mc then
    fields[#fields + 1] = 'mc'
    fields[#fields + 1] = fmt(s.mc)
  end
  local exp = nil
  if not s.exp or s.exp < needed then
    exp = needed + 60e6
    fields[#fields + 1] = 'exp'
    fields[#fields + 1] = fmt(exp)
  end
  redis.call('HSET', key, unpack(fields))
  if exp then
    -- At most MAX_TTL_MS: a huge capacity at a tiny rate would ask for more
    -- than PEXPIRE takes (and '%.17g' writes 1e17 and up with an exponent).
    redis.call('PEXPIRE', key, string.format('%.0f', math.min(math.ceil((exp - now) / 1000), MAX_TTL_MS)))
  end
end

-- The adaptation state for a reply: ' rd' at the configured rate, or
-- ' rd since k wm' while recovering (since: microseconds since the decrease).
-- Lua's own number format (14 digits) is plenty here, and cheaper.
local function curve(s, now)
  if s.ld then
    return ' ' .. (s.rd or 0) .. ' ' .. (now - s.ld) .. ' ' .. (s.k or 0) .. ' ' .. s.wm
  end
  return ' ' .. (s.rd or 0)
end

-- What the adaptation scripts return: 'now iv rd [since k wm]'.
local function report(s, now)
  return fmt(now) .. ' ' .. fmt(s.iv) .. curve(s, now)
end
