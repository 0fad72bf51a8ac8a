"""TokenBucket on a virtual clock: the token arithmetic, exactly."""

from __future__ import annotations

import itertools
import math
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpc_throttle import TokenBucket
from grpc_throttle.buckets import Limit, _burst
from grpc_throttle.buckets._redis_adapt import FallbackRound
from tests.clock import VirtualClock


def make(rate: float = 10, capacity: float | None = None) -> tuple[TokenBucket, VirtualClock]:
    clock = VirtualClock()
    return TokenBucket(rate=rate, capacity=capacity, clock=clock), clock


def test_a_new_bucket_sends_pairs_until_answers_come_back() -> None:
    # Slow start: the burst is 2 (burst.INITIAL) until successes say the server takes more.
    bucket, _ = make(rate=10)
    assert bucket.burst == _burst.INITIAL == 2 and bucket.capacity == 10
    delays = [bucket.reserve().delay for _ in range(5)]  # type: ignore[union-attr]
    assert delays == pytest.approx([0.0, 0.0, 0.1, 0.1, 0.2])


def test_successes_grow_the_burst_to_the_rate_window_then_a_window_goes_at_once() -> None:
    bucket, clock = make(rate=10)
    for expected in range(3, 11):
        bucket.record_success()
        assert bucket.burst == expected
    bucket.record_success()
    assert bucket.burst == 10  # never past the rate's window
    clock.advance(5)
    delays = [bucket.reserve().delay for _ in range(12)]  # type: ignore[union-attr]
    assert delays[:10] == pytest.approx([0.0] * 10)
    # The 11th waits for the first to leave the 1 s window, plus the guard.
    assert delays[10:] == pytest.approx([1.0 + bucket.guard] * 2)


def test_slow_start_sends_its_burst_per_even_interval_and_a_throttle_in_a_burst_ends_it() -> None:
    bucket, clock = make(rate=10)
    for _ in range(2):
        bucket.record_success()  # burst 4, below the window of 10: still slow start
    reservations = [bucket.reserve() for _ in range(8)]
    # 4 per even interval, so the pace grows with every answer (not 4 in any 0.4 s).
    assert [r.delay for r in reservations] == pytest.approx([0.0] * 4 + [0.1] * 4)  # type: ignore[union-attr]
    paired = reservations[1]
    assert paired is not None
    bucket.record_throttle(paired.round)
    # The burst was exploring: it halves, and the rate stays (the rate was not the problem).
    assert bucket.burst == 2 and bucket.effective_rate == 10
    clock.advance(5)
    # Past slow start the burst is a token bucket's: 2 at once, then 2 per 2/10 s.
    assert [bucket.reserve().delay for _ in range(4)] == pytest.approx([0.0, 0.0, 0.2, 0.2])  # type: ignore[union-attr]


def test_an_evenly_spaced_call_throttled_in_slow_start_ends_it_and_cuts_the_rate() -> None:
    bucket, clock = make(rate=10)
    reservations = [bucket.reserve() for _ in range(3)]  # 0, 0 (a pair), 0.1 (even)
    even = reservations[2]
    assert even is not None and even.delay == pytest.approx(0.1)
    clock.advance(0.2)
    bucket.record_throttle(even.round)
    assert bucket.burst == 1 and bucket.effective_rate == pytest.approx(7)
    for _ in range(50):
        bucket.record_success()
    assert bucket.burst == 1  # no widening while the rate is below the configured one


def test_a_throttle_in_the_learned_burst_halves_it_and_cuts_the_rate() -> None:
    bucket, _ = make(rate=10)
    for _ in range(8):
        bucket.record_success()
    assert bucket.burst == 10
    first, second = bucket.reserve(), bucket.reserve()
    assert first is not None and second is not None and second.delay == 0
    bucket.record_throttle(second.round)
    assert bucket.burst == 5 and bucket.effective_rate == pytest.approx(7)


def test_a_failed_probe_steps_back_without_a_cut_and_the_next_probe_waits_twice_as_long() -> None:
    bucket, clock = make(rate=10)
    bucket.record_throttle(bucket.reserve().round)  # type: ignore[union-attr]  # slow start ends at 1
    assert bucket.burst == 1 and bucket.effective_rate == pytest.approx(7)
    bucket.set_effective_rate(10)
    bucket.record_success()  # the rate is back at the configured one: the burst may widen again
    widen = _burst.WIDEN_AFTER * 10
    for _ in range(widen):
        bucket.record_success()
    assert bucket.burst == 2  # a probe
    clock.advance(5)
    probe = [bucket.reserve() for _ in range(2)][1]
    assert probe is not None and probe.delay == 0
    bucket.record_throttle(probe.round)
    assert bucket.burst == 1 and bucket.effective_rate == 10  # back to the threshold, rate kept
    for _ in range(widen):
        bucket.record_success()
    assert bucket.burst == 1  # the next probe waits twice as long
    for _ in range(widen):
        bucket.record_success()
    assert bucket.burst == 2  # the second probe
    for _ in range(2 * widen):
        bucket.record_success()
    assert bucket.burst == 2  # it lasted as long: it is the threshold now, and the wait is back to one
    for _ in range(widen):
        bucket.record_success()
    assert bucket.burst == 3


def test_calls_re_planned_by_a_cut_join_the_new_round() -> None:
    bucket, _ = make(rate=10, capacity=1)
    queued = [bucket.reserve() for _ in range(4)]
    first = queued[0]
    assert first is not None
    bucket.record_throttle(first.round)  # a cut re-plans the three still waiting
    assert bucket.effective_rate == pytest.approx(7)
    waiting = queued[3]
    assert waiting is not None
    bucket.record_throttle(waiting.round)  # sent under the new schedule: news, not an echo
    assert bucket.effective_rate == pytest.approx(4.9)
    bucket.record_throttle(first.round)  # the old round: one signal only
    assert bucket.effective_rate == pytest.approx(4.9)


def test_a_round_its_owner_wrapped_survives_a_re_plan() -> None:
    # The Redis bucket's fallback wraps its rounds (FallbackRound) to say whose they are.
    bucket, _ = make(rate=10, capacity=1)
    queued = [bucket.reserve() for _ in range(3)]
    waiting = queued[2]
    assert waiting is not None
    wrapped = FallbackRound(waiting.round)
    waiting.round = wrapped
    bucket.record_throttle(queued[0].round)  # type: ignore[union-attr]  # a cut re-plans the waiters
    assert waiting.due_in() > 0.2  # re-planned
    assert waiting.round is wrapped


def test_a_declared_burst_is_used_from_the_first_call() -> None:
    bucket, _ = make(rate=15, capacity=15)
    delays = [bucket.reserve().delay for _ in range(17)]  # type: ignore[union-attr]
    assert delays == pytest.approx([0.0] * 15 + [1.01, 1.01])


def test_burst_one_spaces_calls_evenly_forever() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(rate=4, burst=1, clock=clock)
    for _ in range(50):
        bucket.record_success()
    assert bucket.burst == 1
    assert [bucket.reserve().delay for _ in range(4)] == pytest.approx([0, 0.25, 0.5, 0.75])  # type: ignore[union-attr]


def test_without_adaptation_the_burst_is_the_rate_window() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(rate=4, adaptive=None, clock=clock)
    assert bucket.burst == 4
    assert [bucket.try_acquire() for _ in range(5)] == [True, True, True, True, False]


def test_a_declared_burst_above_the_rate_widens_the_window() -> None:
    bucket, clock = make(rate=2, capacity=4)  # 4 in any 2 s
    assert [bucket.try_acquire() for _ in range(5)] == [True] * 4 + [False]
    clock.advance(1.5)
    assert not bucket.try_acquire()
    clock.advance(0.52)
    assert bucket.try_acquire()
    assert bucket.capacity == 4


def test_reservations_are_fifo_and_never_block() -> None:
    bucket, _ = make(rate=2)
    reservations = [bucket.reserve() for _ in range(5)]
    ready = [r.ready_at for r in reservations]  # type: ignore[union-attr]
    assert ready == sorted(ready)
    # Evenly spaced at 0.5 s, and every third waits for the 1 s window plus its guard.
    assert ready[-1] - ready[0] == pytest.approx(2.0 + 2 * bucket.guard)


def test_a_wait_longer_than_max_wait_takes_nothing() -> None:
    bucket, _ = make(rate=1)
    assert bucket.reserve(max_wait=0) is not None
    assert bucket.reserve(max_wait=0.5) is None
    level = bucket.available()
    assert bucket.reserve(max_wait=0.99) is None
    assert bucket.available() == level
    assert bucket.reserve(max_wait=1.0 + bucket.guard) is not None


def test_cancelling_the_last_reservation_gives_its_slot_back() -> None:
    bucket, _ = make(rate=2, capacity=1)
    bucket.reserve()
    queued = bucket.reserve()
    assert queued is not None and queued.delay == pytest.approx(0.5)
    queued.cancel()
    queued.cancel()  # idempotent
    again = bucket.reserve()
    assert again is not None and again.delay == pytest.approx(0.5)


def test_cancelling_waiters_in_any_order_gives_every_slot_back() -> None:
    bucket, _ = make(rate=4)
    bucket.reserve()
    waiting = [bucket.reserve() for _ in range(5)]
    for reservation in waiting:  # oldest first
        reservation.cancel()  # type: ignore[union-attr]
    nxt = bucket.reserve()
    assert nxt is not None and nxt.delay == pytest.approx(0.25)
    assert bucket.available() == pytest.approx(-1)


def test_cancelling_a_middle_reservation_does_not_let_a_newcomer_overtake() -> None:
    bucket, _ = make(rate=1)
    bucket.reserve()
    middle = bucket.reserve()
    last = bucket.reserve()
    middle.cancel()  # type: ignore[union-attr]
    newcomer = bucket.reserve()
    assert newcomer.ready_at > last.ready_at  # type: ignore[union-attr]


def test_cancel_after_the_reservation_came_due_changes_nothing() -> None:
    bucket, clock = make(rate=2)
    bucket.reserve()
    second = bucket.reserve()
    clock.advance(0.75)
    second.cancel()  # type: ignore[union-attr]
    # Both still count: the window (2 in any 1 s, plus the guard) frees at 1.01.
    assert bucket.reserve().delay == pytest.approx(0.26)  # type: ignore[union-attr]


def test_rate_can_change_live() -> None:
    bucket, _ = make(rate=1, capacity=1)
    bucket.reserve()
    queued = bucket.reserve()  # due in 1 s + guard at rate 1
    assert queued is not None and queued.delay == pytest.approx(1.01)
    bucket.rate = 10
    assert bucket.rate == 10
    nxt = bucket.reserve()
    # The queued caller keeps its time; the next one follows it at the new rate.
    assert nxt is not None and nxt.ready_at - queued.ready_at == pytest.approx(0.1)
    bucket.rate = 0.5
    # A cut re-plans the queue under the new windows (1 call in any 2 s):
    # each waiter, asking again when its old time comes, learns its new one.
    assert queued.due_in() == pytest.approx(2.01) and nxt.due_in() == pytest.approx(4.02)
    slower = bucket.reserve()
    assert slower is not None and slower.ready_at - nxt.ready_at == pytest.approx(2.01)


def test_a_cut_re_plans_the_callers_already_waiting() -> None:
    bucket, clock = make(rate=10, capacity=1)
    queued = [bucket.reserve() for _ in range(5)]  # due at 0, 0.1, ... 0.4
    clock.advance(0.15)  # two have gone
    bucket.set_effective_rate(5)
    # Those still waiting keep their order and are now 0.2 s apart, counted
    # from the last one that went (0.1): 0.3, 0.5, 0.7 on the bucket clock.
    due = [r.due_in() for r in queued]  # type: ignore[union-attr]
    assert due == pytest.approx([0.0, 0.0, 0.15, 0.35, 0.55])
    # The next one: 5 in any second now, so it waits for the send at 0 to leave.
    tail = bucket.reserve()
    assert tail.delay == pytest.approx(0.86)  # type: ignore[union-attr]
    # Cancelling it gives its slot back to the next caller.
    tail.cancel()  # type: ignore[union-attr]
    assert bucket.reserve().delay == pytest.approx(0.86)  # type: ignore[union-attr]
    # A speed-up leaves the waiters' slots where they are.
    bucket.set_effective_rate(10)
    assert [r.due_in() for r in queued] == pytest.approx([0.0, 0.0, 0.15, 0.35, 0.55])  # type: ignore[union-attr]


def test_a_waiter_cancelled_after_a_cut_gives_back_its_new_slot() -> None:
    bucket, clock = make(rate=10, capacity=1)
    queued = [bucket.reserve() for _ in range(4)]  # due at 0 ... 0.3
    bucket.set_effective_rate(5)  # 0.1 -> 0.2, 0.2 -> 0.4, 0.3 -> 0.6, tail 0.8
    clock.advance(0.5)
    queued[3].cancel()  # type: ignore[union-attr]  # not due until 0.6 now: its slot comes back
    assert bucket.reserve().delay == pytest.approx(0.1)  # type: ignore[union-attr]


def test_effective_rate_never_exceeds_the_configured_rate() -> None:
    bucket, _ = make(rate=10)
    bucket.set_effective_rate(4)
    assert bucket.effective_rate == 4 and bucket.rate == 10
    bucket.set_effective_rate(50)
    assert bucket.effective_rate == 10


def test_cost_per_call_takes_several_tokens() -> None:
    bucket, _ = make(rate=10, capacity=5)  # 10 in any second, 5 in any half second
    assert bucket.try_acquire(5)
    reservation = bucket.reserve(3)
    assert reservation is not None and reservation.delay == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": -1}, "rate"),
        ({"rate": math.nan}, "rate"),
        ({"rate": math.inf}, "rate"),
        ({"rate": "15"}, "rate"),
        ({"rate": True}, "rate"),
        ({"rate": 1, "capacity": 0.5}, "capacity"),
        ({"rate": 1, "capacity": math.nan}, "capacity"),
        ({"rate": 1, "capacity": math.inf}, "capacity"),
        ({"rate": 1, "burst": 0}, "burst"),
        ({"rate": 1, "burst": "2"}, "burst"),
        ({"rate": 1, "burst": 2, "capacity": 2}, "capacity is the former name of burst"),
        ({"rate": 1, "guard": -0.1}, "guard"),
        ({"rate": 1, "guard": 61}, "guard"),
        ({"rate": 1, "limits": Limit(10, 60)}, "limits must be a list"),
        ({"rate": 1, "limits": [(10, 60)]}, "limits must hold Limit"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TokenBucket(**kwargs)  # type: ignore[arg-type]


def test_bad_token_counts_and_rates_are_rejected() -> None:
    bucket, _ = make(rate=1, capacity=2)
    with pytest.raises(ValueError, match="tokens"):
        bucket.reserve(3)
    with pytest.raises(ValueError, match="tokens"):
        bucket.try_acquire(0)
    with pytest.raises(ValueError, match="rate"):
        bucket.rate = math.nan
    with pytest.raises(ValueError, match="timeout"):
        bucket.acquire(timeout=-1)


def test_repr_shows_live_state() -> None:
    bucket, _ = make(rate=15, capacity=3)
    assert repr(bucket) == "<TokenBucket rate=15/15/s burst=3 available=3.00>"


# -- the defining property -----------------------------------------------------

operations = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=0.5),  # time to advance first
        st.sampled_from([1, 1, 1, 2]),  # tokens
        st.booleans(),  # cancel a random earlier waiter afterwards?
        st.integers(min_value=0, max_value=50),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=50),
    capacity=st.integers(min_value=2, max_value=6),
    ops=operations,
)
def test_no_window_ever_admits_more_than_capacity_plus_rate_times_its_length(
    rate: float, capacity: int, ops: list[tuple[float, int, bool, int]]
) -> None:
    bucket, clock = make(rate=rate, capacity=capacity)
    live: list[tuple[float, float, object]] = []  # (ready_at, tokens, reservation)
    for advance, tokens, cancel, pick in ops:
        clock.advance(advance)
        reservation = bucket.reserve(tokens)
        assert reservation is not None
        live.append((reservation.ready_at, tokens, reservation))
        if cancel:
            target = live[pick % len(live)]
            if target[0] > clock.now:  # still waiting: it never goes ahead
                target[2].cancel()  # type: ignore[attr-defined]
                live.remove(target)
    admitted = sorted((ready, tokens) for ready, tokens, _ in live)
    for i, (start, _) in enumerate(admitted):
        total = 0.0
        for end, tokens in admitted[i:]:
            total += tokens
            assert total <= capacity + rate * (end - start) + 1e-6


def test_many_threads_share_one_bucket_without_losing_or_inventing_tokens() -> None:
    bucket = TokenBucket(rate=1000, capacity=1)
    ready: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(250):
            reservation = bucket.reserve()
            assert reservation is not None
            with lock:
                ready.append(reservation.ready_at)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ready.sort()
    assert len(ready) == 2000
    # The schedule of 2000 tokens at 1000/s spans 1.999 s, whatever the interleaving.
    assert ready[-1] - ready[0] == pytest.approx(1.999, abs=0.05 + (time.monotonic() - started))
    gaps = [b - a for a, b in itertools.pairwise(ready)]
    assert min(gaps) >= 0.001 - 1e-9


def test_cancelled_reservations_give_tokens_back_across_rate_changes() -> None:
    # Adaptation changes the rate while callers wait; cancelling them must
    # still return their tokens (found by the fault-injection suite).
    bucket, clock = make(rate=20)
    bucket.record_throttle(bucket.reserve().round)  # 14/s, recovering
    waiting = [bucket.reserve() for _ in range(100)]
    clock.advance(0.3)
    bucket.record_success()  # the curve moves: another rate change
    assert bucket.effective_rate != 14
    for reservation in waiting:
        reservation.cancel()  # type: ignore[union-attr]
    assert bucket.available() > -1
    fresh = bucket.reserve()
    assert fresh is not None and fresh.delay < 0.2


def test_cancel_across_a_rate_change_keeps_the_window_property() -> None:
    bucket, _ = make(rate=10, capacity=2)
    first = [bucket.reserve() for _ in range(6)]
    bucket.rate = 5
    later = [bucket.reserve() for _ in range(3)]
    first[-1].cancel()  # type: ignore[union-attr]  # not the tail any more: a hole
    for reservation in reversed(later):
        reservation.cancel()  # type: ignore[union-attr]  # the tail, then the hole too
    nxt = bucket.reserve()
    assert nxt is not None
    # Five of the first six still hold their slots: the next one comes after them.
    assert nxt.ready_at >= first[4].ready_at  # type: ignore[union-attr]


def test_a_faster_rate_never_squeezes_the_next_slot_against_those_handed_out() -> None:
    # Recovery raises the rate while callers wait; the next caller must still
    # come at least one (new) interval after the last slot already given out.
    bucket, _ = make(rate=10, capacity=1)
    handed_out = [bucket.reserve() for _ in range(5)]
    bucket.rate = 20
    nxt = bucket.reserve()
    assert nxt is not None
    assert nxt.ready_at - handed_out[-1].ready_at >= 1 / 20 - 1e-9  # type: ignore[union-attr]
    assert nxt.ready_at - handed_out[-1].ready_at <= 1 / 10 + 1e-9  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(
    rates=st.lists(st.floats(min_value=1, max_value=20), min_size=1, max_size=5),
    capacity=st.integers(min_value=1, max_value=4),
    ops=st.lists(
        st.tuples(st.floats(min_value=0, max_value=0.5), st.integers(0, 9), st.integers(0, 50)),
        min_size=1,
        max_size=80,
    ),
)
def test_rate_changes_and_cancels_never_exceed_the_fastest_rate_in_force(
    rates: list[float], capacity: int, ops: list[tuple[float, int, int]]
) -> None:
    # op 0-6: reserve; 7: cancel a waiting one; 8-9: switch to one of the rates.
    bucket, clock = make(rate=rates[0], capacity=capacity)
    live: list[Any] = []
    for advance, op, pick in ops:
        clock.advance(advance)
        if op <= 6:
            reservation = bucket.reserve()
            assert reservation is not None
            live.append(reservation)
        elif op == 7 and live:
            target = live[pick % len(live)]
            if target.ready_at > clock.now:
                target.cancel()
                live.remove(target)
        else:
            bucket.rate = rates[pick % len(rates)]
    fastest = max(rates)
    admitted = sorted(r.ready_at for r in live)
    for i, start in enumerate(admitted):
        for count, end in enumerate(admitted[i:], start=1):
            assert count <= capacity + fastest * (end - start) + 1e-6
