"""Pure token arithmetic, shared by every bucket.

The bucket is kept as one number, the *theoretical arrival time* (``tat``) of
the Generic Cell Rate Algorithm: the instant at which the bucket would be full
again if nobody took another token. With an emission interval ``I = 1/rate``
and a burst of ``capacity`` tokens, taking ``n`` tokens at ``now`` moves ``tat``
to ``max(tat, now) + n*I`` and may go ahead at ``new_tat - capacity*I``.

That is the classic token bucket (tokens refill at ``rate`` up to
``capacity``) written so that a reservation is one comparison and one store,
with no clock of its own and no I/O. The Redis bucket's Lua script does the
same arithmetic on the server's clock.
"""

from __future__ import annotations

#: Waits shorter than this are rounding noise and count as "no wait".
EPSILON = 1e-9
#: The changes of rate a Redis bucket keeps for waiters to catch up with
#: (``RESCALES`` in ``lua/_common.lua``, which a test holds equal to this): a
#: reservation made before more changes than this keeps its place, too early.
#: A cut and the recovery after it count one change per step of at least 1 %
#: (``_cubic.MIN_CHANGE``): from 0.7 of the rate back to all of it is about
#: 36 steps, so 8 lost the cut for a waiter queued before it (a slot 0.8 s
#: too early in a 20-deep queue at 10/s); 64 covers a cut to 0.53 of the rate
#: and its whole recovery. Each change kept costs ~40 bytes in the key's hash.
RESCALES = 64


def reserve(
    tat: float, now: float, interval: float, capacity: float, tokens: float, max_wait: float
) -> tuple[float, float, float] | None:
    """Take ``tokens`` from a bucket at ``now``.

    Args:
        tat: The bucket's theoretical arrival time.
        now: The current time on the bucket's clock.
        interval: Seconds per token (``1/rate``).
        capacity: The bucket's size in tokens.
        tokens: How many tokens to take.
        max_wait: The longest wait the caller accepts, in seconds.

    Returns:
        ``(new_tat, start, wait)``: the bucket's new state, the point the
        reservation started from (what a cancellation may roll back to) and how
        long the caller must wait before going ahead; or ``None`` when the wait
        would exceed ``max_wait``, in which case the bucket is unchanged.
    """
    start = tat if tat > now else now
    new_tat = start + tokens * interval
    wait = new_tat - capacity * interval - now
    if wait <= EPSILON:
        return new_tat, start, 0.0
    if wait > max_wait:
        return None
    return new_tat, start, wait


def rescale(tat: float, now: float, old_interval: float, new_interval: float, capacity: float = 1.0) -> float:
    """Carry a bucket's state over to a new rate.

    The number of tokens queued (or available) is kept; what changes is how
    they are spaced:

    * On a slowdown the whole schedule ahead of ``now`` is stretched by
      ``new_interval / old_interval``: the calls already queued are spread at
      the new rate rather than sent at the old one, so a cut takes effect at
      once instead of after the queue drains. Waiters re-read their slot
      (``Reservation.due_in()``) and sleep the difference;
      one that does not simply goes earlier, inside the stretched window,
      which still holds the same number of calls.
    * On a speed-up, callers already given a slot keep it (they are sleeping
      toward it and would not wake earlier), so while such slots exist the
      tail stays where it is and the next slot comes one *new* interval after
      the last one handed out. Otherwise the token level is kept.

    Both mappings are continuous and increasing, so the order of any two
    points of the schedule (and of cancelled holes in it) is preserved. The
    instant a reservation becomes due is a point with no burst behind it:
    carry it with ``capacity=0``.
    """
    if tat <= now:
        return tat
    if new_interval < old_interval and tat - capacity * old_interval >= now:
        return tat - capacity * (old_interval - new_interval)
    return now + (tat - now) * new_interval / old_interval


def level(tat: float, now: float, interval: float, capacity: float) -> float:
    """Tokens available at ``now``; negative when reservations are queued."""
    if tat <= now:
        return capacity
    return capacity - (tat - now) / interval
