"""Window-shaped pacing on a virtual clock: every declared window holds, and no call waits for nothing."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpc_throttle import Limit, TokenBucket
from grpc_throttle.buckets._window import Window, WindowLog, rate_window
from tests.arrivals import most_in_any_window
from tests.clock import VirtualClock


def test_a_limit_holds_with_the_rate() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(rate=50, burst=50, limits=[Limit(120, 10)], clock=clock)
    ready = [bucket.reserve().ready_at - clock.now for _ in range(121)]  # type: ignore[union-attr]
    assert ready[:50] == pytest.approx([0] * 50)
    assert ready[50:100] == pytest.approx([1.01] * 50)
    assert ready[100:120] == pytest.approx([2.02] * 20)
    assert ready[120] == pytest.approx(10.01)  # the 10 s window is full until the first send leaves


def test_limit_values_are_checked_and_named() -> None:
    assert Limit(10_000, 3600).rate == pytest.approx(10_000 / 3600)
    for bad, field in [((0, 1), "count"), ((1.5, 1), "count"), ((True, 1), "count"), ((10**10, 1), "count")]:
        with pytest.raises(ValueError, match=field):
            Limit(*bad)  # type: ignore[arg-type]
    for bad_seconds in (0, -1, math.nan, math.inf, 1e10, "60"):
        with pytest.raises(ValueError, match="seconds"):
            Limit(10, bad_seconds)  # type: ignore[arg-type]


def test_a_rate_reads_as_whole_calls_in_a_window() -> None:
    assert rate_window(15) == (15, 1.0)
    assert rate_window(2.5) == pytest.approx((3, 1.2))
    assert rate_window(0.5) == pytest.approx((1, 2.0))


def test_a_cut_scales_the_counts_of_declared_limits() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(rate=10, burst=10, limits=[Limit(100, 60)], clock=clock)
    bucket.set_effective_rate(5)
    counts = sorted(window.calls for window in bucket._windows)
    assert counts == [5, 10, 50]  # the cut rate's window, the configured one beside it, the limit scaled


def test_a_full_hourly_window_holds_new_calls_until_its_oldest_send_leaves() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(rate=10, burst=10, limits=[Limit(1000, 3600)], clock=clock, guard=0)
    bucket.reserve()
    clock.advance(100)
    assert not bucket.hold_window(60)  # no declared limit has that window: nothing changes
    assert bucket.reserve().delay == 0  # type: ignore[union-attr]
    assert bucket.hold_window(3600)
    assert bucket.reserve().delay == pytest.approx(3500)  # type: ignore[union-attr]
    assert bucket.reserve(max_wait=10) is None


# -- the properties of the issue: no window overfills; no call waits for nothing ---

steps = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=0.4),  # time to advance first
        st.integers(min_value=0, max_value=9),  # 0-5 reserve, 6 cancel, 7 throttle, 8 success, 9 cut/restore
        st.integers(min_value=0, max_value=1000),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.sampled_from([1, 2.5, 4, 10, 15]),
    burst=st.sampled_from([None, 1, 2, 5]),
    limit=st.sampled_from([None, Limit(6, 3), Limit(20, 10)]),
    ops=steps,
)
def test_no_declared_window_ever_holds_more_than_its_count(
    rate: float, burst: float | None, limit: Limit | None, ops: list[tuple[float, int, int]]
) -> None:
    clock = VirtualClock()
    limits = [] if limit is None else [limit]
    bucket = TokenBucket(rate=rate, burst=burst, limits=limits, clock=clock, guard=0)
    live: list[Any] = []
    for advance, op, pick in ops:
        clock.advance(advance)
        if op <= 5:
            reservation = bucket.reserve()
            assert reservation is not None
            live.append(reservation)
        elif op == 6 and live:
            target = live[pick % len(live)]
            if target.ready_at > clock.now:  # still waiting: it never goes ahead
                target.cancel()
                live.remove(target)
        elif op == 7 and live:
            bucket.record_throttle(live[pick % len(live)].round)
        elif op == 8:
            bucket.record_success()
        elif op == 9:
            bucket.set_effective_rate(rate * (0.3 + (pick % 8) / 10))
    sends = [r.ready_at for r in live]
    count, span = rate_window(rate)
    windows = [(max(count, burst or 0), max(count, burst or 0) / rate)]
    windows += [(limit.count, limit.seconds) for limit in limits]
    for count, span in windows:
        assert most_in_any_window(sends, span) <= count


@settings(max_examples=300, deadline=None)
@given(
    rate=st.sampled_from([2, 4, 10]),
    burst=st.sampled_from([1, 2, 4]),
    limit=st.sampled_from([None, Limit(5, 3)]),
    ops=st.lists(st.tuples(st.floats(min_value=0, max_value=0.6), st.booleans(), st.integers(0, 100)), max_size=60),
)
def test_a_call_waits_only_when_sending_it_sooner_would_overfill_a_window(
    rate: float, burst: int, limit: Limit | None, ops: list[tuple[float, bool, int]]
) -> None:
    # With the windows fixed (no adaptation), each slot is the earliest one,
    # after the calls queued before it, at which every window holds.
    clock = VirtualClock()
    limits = [] if limit is None else [limit]
    bucket = TokenBucket(rate=rate, burst=burst, limits=limits, clock=clock, guard=0, adaptive=None)
    windows = bucket._windows
    live: list[Any] = []
    for advance, cancel, pick in ops:
        clock.advance(advance)
        if cancel and live:
            target = live[pick % len(live)]
            if target.ready_at > clock.now:
                target.cancel()
                live.remove(target)
            continue
        before = [r.ready_at for r in live]
        reservation = bucket.reserve()
        assert reservation is not None
        slot = reservation.ready_at
        if reservation.delay > 0:
            queued_after = max(before, default=-math.inf)
            sooner = max(clock.now, slot - 1e-6)
            if sooner > queued_after:  # not held by first-come-first-served: a window must be full
                assert any(sum(1 for t in before if sooner - span < t <= sooner) + 1 > count for count, span in windows)
        live.append(reservation)
        for count, span in windows:
            assert most_in_any_window([r.ready_at for r in live], span) <= count


@settings(max_examples=100, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0, max_value=0.05), min_size=1, max_size=400),
    count=st.integers(min_value=3, max_value=60),
)
def test_merged_sends_never_undercount_and_overcount_by_less_than_one_merged_entry(
    gaps: list[float], count: int
) -> None:
    # Past max_entries, sends are merged into the later of each pair: a
    # window can then only be counted high, by less than the weight of the
    # merged entry straddling its start.
    log = WindowLog(max_entries=16)
    window = (Window(float(count), 1.0),)
    now, sends = 0.0, []
    for gap in gaps:
        now += gap
        when = log.earliest(max(now, log.last), 1.0, window)
        log.append(when, 1.0, None)
        sends.append(when)
        now = max(now, when)
        log.prune(now - 1.0, now)
        assert len(log) <= 16 + 1 or max(log.entry_weights()) > 1  # bounded, or merged
    assert most_in_any_window(sends, 1.0) <= count
    kept, weights = log.times(), log.entry_weights()
    true = sum(1 for t in sends if t > now - 1.0)
    counted = sum(w for t, w in zip(kept, weights, strict=True) if t > now - 1.0)
    assert true <= counted < true + max(weights) + 1e-9


@pytest.mark.parametrize("rate", [15.0, 1000.0])
def test_a_long_busy_run_prunes_and_compacts_the_log_without_changing_the_schedule(rate: float) -> None:
    # Sends are kept for the longest window only; every ~1,000 forgotten ones the
    # log is compacted, inside a reservation. Once that made a reservation raise
    # IndexError (at 15/s, once every minute or so). Nothing may change.
    clock = VirtualClock()
    bucket = TokenBucket(rate=rate, clock=clock, adaptive=None)
    reference = TokenBucket(rate=rate, clock=clock, adaptive=None)
    reference._log = WindowLog(max_entries=10**9)  # keeps every send
    reference._log.horizon = math.inf
    compactions = 0
    for _ in range(5000):
        head = bucket._log._head
        got, want = bucket.reserve(), reference.reserve()
        assert got is not None and want is not None
        assert got.ready_at == want.ready_at
        compactions += bucket._log._head < head
        clock.advance(max(got.ready_at - clock(), 0.0))
    assert compactions >= 2
    assert len(bucket._log) < 2 * rate + 1100  # what the windows need, not every send
