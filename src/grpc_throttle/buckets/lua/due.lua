-- Where a reservation made before changes of rate stands now: its place
-- carried through every change since its epoch, as TokenBucket does for its
-- own reservations (Reservation.due_in): a slowdown stretches the queue.
-- KEYS[1]  the bucket hash
-- ARGV[1]  the caller's configured rate (tokens/s), ARGV[2] capacity (tokens)
-- ARGV[3]  the reservation's start, ARGV[4] its end, ARGV[5] when it was due
--          (microseconds), ARGV[6] the epoch it was made in
-- ARGV[7]  with limits: its tokens, ARGV[8] the limits, KEYS[2] their counts
-- Returns 'ep start end due now'. When the changes since its epoch are no
-- longer all kept, the place comes back as it was (its own epoch).
local key = KEYS[1]
local capacity = tonumber(ARGV[2])
local now = now_us()
local s = load(key, now, tonumber(ARGV[1]), nil, capacity)
if s.rate_changed or s.mr then
  store(key, s, now, capacity)
end
local start, stop, due, ep = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if ep < s.ep then
  local changes = {}
  for e, when, old, new in string.gmatch(s.rs or redis.call('HGET', key, 'rs') or '', '([^,;]+),([^,;]+),([^,;]+),([^,;]+)') do
    if tonumber(e) > ep then
      changes[#changes + 1] = {tonumber(e), tonumber(when), tonumber(old), tonumber(new)}
    end
  end
  if #changes > 0 and changes[1][1] == ep + 1 and changes[#changes][1] == s.ep then
    for _, c in ipairs(changes) do
      start = carry(start, c[2], c[3], c[4], capacity)
      stop = carry(stop, c[2], c[3], c[4], capacity)
      due = carry(due, c[2], c[3], c[4], 0)
    end
    ep = s.ep
    if ARGV[8] and due > now then -- counted where it now goes too (and still where it was)
      local ws = windows_load(KEYS[2], ARGV[8], now)
      local was = tonumber(ARGV[5])
      local moved = {}
      for _, w in ipairs(ws) do
        if math.floor(due / w.g) ~= math.floor(was / w.g) then
          moved[#moved + 1] = w
        end
      end
      if #moved > 0 then
        windows_add(moved, due, tonumber(ARGV[7]))
        windows_store(KEYS[2], ws, now, due)
      end
    end
  end
end
return ep .. ' ' .. fmt(start) .. ' ' .. fmt(stop) .. ' ' .. fmt(due) .. ' ' .. now
