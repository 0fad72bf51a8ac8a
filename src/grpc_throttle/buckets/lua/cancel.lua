-- Give back a cancelled reservation's tokens, as TokenBucket._cancel does.
-- Only the tail of the schedule can go back without letting a newcomer
-- overtake a reservation already queued. A cancelled reservation that is not
-- the tail is remembered as a hole (its end -> its start); when the tail is
-- cancelled, the schedule rolls back through every hole it then reaches, so
-- cancelling a queue in any order gives it all back. Nothing goes back once
-- the reservation is due, or after a change of rate (another epoch).
-- KEYS[1]  the bucket hash, KEYS[2] its holes (sorted set: member start, score end)
-- ARGV[1]  the reservation's start, ARGV[2] its end (microseconds)
-- ARGV[3]  the epoch it was made in, ARGV[4] when it becomes due (microseconds)
-- ARGV[5]  with limits: its tokens, ARGV[6] the limits, KEYS[3] their counts
-- Returns 1 when tokens went back, else 0.
-- A reservation not yet due also leaves the windows of limits=, whatever
-- its place in the queue: its tokens come off the sub-window it was counted
-- in, unless its time lies within a microsecond of a sub-window's edge (the
-- client computed it) or the count was merged away: then it still counts
-- until the window passes (over-counted, never under).
-- Holes are of the epoch in 'hse': a change of rate moves every slot, so
-- holes of another epoch are dropped rather than given back at the wrong
-- place; so are holes whose end has passed (nothing left to give back). The
-- set expires with the bucket. (0.1 kept its holes in 'key:holes' with their
-- epoch in 'hep'; the set moved into the hash's cluster slot, and its epoch got
-- a field of its own, so that a 0.1 process during a rolling upgrade can never
-- vouch for holes it did not write.)
local key, holes = KEYS[1], KEYS[2]
local now = now_us()
local due = tonumber(ARGV[4])
if due <= now then
  return 0
end
if ARGV[6] then
  local ws = windows_load(KEYS[3], ARGV[6], now)
  local tokens = tonumber(ARGV[5])
  local changed = false
  for _, w in ipairs(ws) do
    local i = math.floor((due - 1) / w.g)
    if i == math.floor((due + 1) / w.g) then
      for k = 1, #w.idx do
        if w.idx[k] == i and w.cnt[k] >= tokens then
          w.cnt[k] = w.cnt[k] - tokens
          w.txt[k] = false
          changed = true
        end
      end
    end
  end
  if changed then -- the expiry set when they were counted stands
    windows_store(KEYS[3], ws, now, nil)
  end
end
local st = redis.call('HMGET', key, 'tat', 'ep', 'iv', 'hse')
local tat, ep = tonumber(st[1]), tonumber(st[2])
if not tat or ep ~= tonumber(ARGV[3]) then
  return 0
end
local start, stop = tonumber(ARGV[1]), tonumber(ARGV[2])
-- Times near 1.7e15 us are exact to 0.25 us only, and the client computed
-- stop itself: match ends within a microsecond (less than any slot).
local tol = math.min(1, (tonumber(st[3]) or 1) / 4)
local fresh = tonumber(st[4]) == ep
if not fresh then
  redis.call('DEL', holes)
else
  redis.call('ZREMRANGEBYSCORE', holes, '-inf', fmt(now))
end
if math.abs(stop - tat) > tol then
  if stop < tat then -- behind later reservations: a hole until the tail reaches it
    redis.call('ZADD', holes, fmt(stop), fmt(start))
    local ttl = redis.call('PTTL', key)
    if ttl > 0 then
      redis.call('PEXPIRE', holes, ttl)
    end
    if not fresh then
      redis.call('HSET', key, 'hse', fmt(ep))
    end
  end
  return 0
end
tat = start
if fresh then
  while true do
    local hole = redis.call('ZRANGEBYSCORE', holes, fmt(tat - tol), fmt(tat + tol), 'LIMIT', 0, 1)
    if #hole == 0 then
      break
    end
    redis.call('ZREM', holes, hole[1])
    tat = tonumber(hole[1])
  end
end
redis.call('HSET', key, 'tat', fmt(tat))
return 1
