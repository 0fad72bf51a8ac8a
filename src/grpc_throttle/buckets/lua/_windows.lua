-- Prepended, after _common.lua, to the scripts that take limits= (reserve,
-- due, cancel, state, hold, count).
--
-- The quota windows of limits= (see _redis_windows.py, their Python twin):
-- per limit, the tokens sent per sub-window of seconds / SUBWINDOWS, as one
-- field of the windows hash named after the limit ('count:us'), holding
-- 'index:tokens;...' ascending. A send at t (sub-window i) fits when the
-- tokens counted from sub-window i - SUBWINDOWS on, plus its own, are at most
-- count; else it waits for the oldest to leave. Over-counts, never under.
-- A field 'hold' (microseconds) holds every new send until then: a window
-- the server said was full (hold.lua).
local SUBWINDOWS = 64
local MAX_ENTRIES = SUBWINDOWS + 1
local PAST_EDGE = 2 -- microseconds into a sub-window: times near 1.8e15 are exact to 0.25

-- The rate in force over the configured one: below 1 while the shared rate is cut.
local function windows_scale(s, rate)
  if s.eff and s.eff < rate then
    return s.eff / rate
  end
  return 1
end

-- The limits in spec ('count:us;...'), each with its counts since now's
-- window began, and the hold (ws.hold, while it lasts). With scale (the rate
-- in force over the configured one), a cut rate's counts are scaled as the
-- rate is, at least 1 (_window.scaled_count).
local function windows_load(wkey, spec, now, scale)
  local ws, fields = {}, {}
  for count, us in string.gmatch(spec, '([^:;]+):([^;]+)') do
    fields[#fields + 1] = count .. ':' .. us
    local allowed = tonumber(count)
    if scale and scale < 1 then
      allowed = math.max(1, math.floor(allowed * scale + 1e-9))
    end
    ws[#ws + 1] = {count = allowed, g = tonumber(us) / SUBWINDOWS, us = tonumber(us)}
  end
  local raw = redis.call('HMGET', wkey, 'hold', unpack(fields))
  local hold = tonumber(raw[1])
  if hold and hold > now then
    ws.hold = hold
  end
  for j, w in ipairs(ws) do
    w.field = fields[j]
    local low = math.floor(now / w.g) - SUBWINDOWS
    local idx, cnt, txt = {}, {}, {}
    for pair, i, c in string.gmatch(raw[j + 1] or '', '(([^:;]+):([^;]+))') do
      i = tonumber(i)
      if i >= low then
        idx[#idx + 1] = i
        cnt[#cnt + 1] = tonumber(c)
        txt[#txt + 1] = pair -- written back as read unless changed (formatting costs most)
      end
    end
    w.idx, w.cnt, w.txt = idx, cnt, txt
  end
  return ws
end

-- The earliest time >= t at which tokens fit one limit (Ring.ready).
local function window_ready(w, t, tokens)
  local low = math.floor(t / w.g) - SUBWINDOWS
  local total = 0
  for k = 1, #w.idx do
    if w.idx[k] >= low then
      total = total + w.cnt[k]
    end
  end
  if total + tokens <= w.count or total <= 0 then
    return t
  end
  local last = low
  for k = 1, #w.idx do
    if w.idx[k] >= low then
      total = total - w.cnt[k]
      last = w.idx[k]
      if total + tokens <= w.count then
        break
      end
    end
  end
  return math.max(t, math.ceil((last + SUBWINDOWS + 1) * w.g) + PAST_EDGE)
end

-- The earliest time >= t, and not held, at which tokens fit every limit (earliest).
local function windows_earliest(ws, t, tokens)
  if ws.hold and ws.hold > t then
    t = ws.hold
  end
  while true do
    local moved = t
    for _, w in ipairs(ws) do
      moved = window_ready(w, moved, tokens)
    end
    if moved == t then
      return t
    end
    t = moved
  end
end

-- When a window the server says is full frees (free_at): as the sends counted
-- in it see it, once the oldest of them, up to now, has left; a whole window
-- from now when none was.
local function window_frees(w, now)
  local low, high = math.floor(now / w.g) - SUBWINDOWS, math.floor(now / w.g)
  for k = 1, #w.idx do
    if w.idx[k] >= low and w.idx[k] <= high and w.cnt[k] > 0 then
      return math.ceil((w.idx[k] + SUBWINDOWS + 1) * w.g) + PAST_EDGE
    end
  end
  return now + w.us
end

-- Tokens one limit still takes now (negative when queued): its count less
-- those counted in the window ending now and after it (Ring.room).
local function window_room(w, now)
  local low, total = math.floor(now / w.g) - SUBWINDOWS, 0
  for k = 1, #w.idx do
    if w.idx[k] >= low then
      total = total + w.cnt[k]
    end
  end
  return w.count - total
end

-- Count tokens sent at t in every limit (Ring.add).
local function windows_add(ws, t, tokens)
  for _, w in ipairs(ws) do
    local i = math.floor(t / w.g)
    local idx, cnt, txt = w.idx, w.cnt, w.txt
    local k = #idx
    while k > 0 and idx[k] > i do
      k = k - 1
    end
    if k > 0 and idx[k] == i then
      cnt[k] = cnt[k] + tokens
      txt[k] = false
    else
      table.insert(idx, k + 1, i)
      table.insert(cnt, k + 1, tokens)
      table.insert(txt, k + 1, false)
    end
    while #idx > MAX_ENTRIES do
      cnt[2] = cnt[2] + cnt[1]
      txt[2] = false
      table.remove(idx, 1)
      table.remove(cnt, 1)
      table.remove(txt, 1)
    end
  end
end

-- Write the counts back. With last (the latest send counted), the hash lives
-- until that send has left the longest window, plus a minute, or longer if it
-- already would: a send counted further ahead (a queue) must not be forgotten.
local function windows_store(wkey, ws, now, last)
  local args, longest = {}, 0
  for _, w in ipairs(ws) do
    local parts = {}
    for k = 1, #w.idx do
      parts[k] = w.txt[k] or (fmt(w.idx[k]) .. ':' .. fmt(w.cnt[k]))
    end
    args[#args + 1] = w.field
    args[#args + 1] = table.concat(parts, ';')
    longest = math.max(longest, w.us)
  end
  redis.call('HSET', wkey, unpack(args))
  if last then
    local ttl = math.min(math.ceil((math.max(last, now) - now + longest) / 1000) + 60000, MAX_TTL_MS)
    if redis.call('PTTL', wkey) < ttl then -- PEXPIRE's GT needs Redis 7
      redis.call('PEXPIRE', wkey, string.format('%.0f', ttl))
    end
  end
end
