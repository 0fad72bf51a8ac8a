"""The Lua scripts do the Python arithmetic: each script against its pure reference.

Every property drives one script on a real redis-server with generated steps,
reads back what it stored (the key's hash) and returned, and compares that with
the function the Python side uses for the same thing:

* ``throttle.lua`` and ``recover.lua`` with ``_cubic.on_throttle`` and
  ``_cubic.on_success`` (the local bucket's curve), and with ``SharedCurve``
  (the copy of the curve a process keeps from the replies);
* the key's effective rate with a local ``TokenBucket``'s under the same
  throttle signals and successes;
* every change of rate (``retime`` in ``_common.lua``) with ``_gcra.rescale``;
* ``due.lua`` with ``_gcra.rescale`` applied through each change since the
  reservation was made, as far back as the history both sides bound alike.

``reserve.lua`` has its own property in test_redis_bucket.py. Steps that only
build a state (aging the last decrease, other scripts) are not asserted on.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import astuple
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpc_throttle import AdaptiveRate, TokenBucket
from grpc_throttle.buckets import _cubic, _gcra
from grpc_throttle.buckets._cubic import CubicState
from grpc_throttle.buckets._redis_adapt import SCRIPTS, SharedCurve
from tests.clock import VirtualClock

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
RATES = st.sampled_from([1.0, 8.0, 50.0, 1000.0])
#: Fractions of the configured rate for set_rate (above 1: capped at the configured rate).
SET_TO = st.sampled_from([0.05, 0.3, 0.7, 0.95, 1.0, 1.5])
#: Seconds of the curve, as a fraction of k + probe_time (past 1: back at the configured rate).
ELAPSED = st.floats(min_value=0.0, max_value=0.6)


@st.composite
def adaptive_rates(draw: st.DrawFn) -> AdaptiveRate:
    beta = draw(st.sampled_from([0.3, 0.5, 0.7, 0.9]))
    return AdaptiveRate(
        beta=beta,
        scale=draw(st.sampled_from([0.05, 0.4, 5.0])),
        headroom=(1 - beta) * draw(st.sampled_from([0.0, 0.1, 0.9])),
        probe_time=draw(st.sampled_from([0.5, 10.0])),
        min_fraction=draw(st.sampled_from([0.05, 0.5])),
        min_rate=draw(st.sampled_from([0.1, 2.0])),
        fast_convergence=draw(st.booleans()),
    )


class Change(NamedTuple):
    """One change of interval, as the test saw it happen."""

    ep: int
    when: float
    old: float
    new: float


class Place(NamedTuple):
    """A reservation's place in the schedule, as the Redis bucket keeps it (microseconds)."""

    start: float
    end: float
    due: float
    ep: int


class Key:
    """One bucket key, driven through the scripts with the arguments the Redis bucket sends."""

    def __init__(self, client: Any, rate: float, capacity: int, adaptive: AdaptiveRate) -> None:
        self.client, self.rate, self.capacity = client, rate, capacity
        #: The first two arguments of most scripts, as the bucket formats them.
        self.rate_and_capacity = [repr(rate), str(capacity)]
        self.name = f"grpc-throttle:eq-{uuid.uuid4().hex[:12]}"
        self.scripts = {name: client.register_script(source) for name, source in SCRIPTS.items()}
        #: The Python copy of the curve, fed every reply as the bucket feeds it (on Redis's clock).
        self.view = SharedCurve(adaptive, rate, threading.Lock())
        #: The changes of interval so far, and the state before the last step.
        self.changes: list[Change] = []
        self.before: dict[str, str] = {}

    def fields(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self.name).items()}

    def run(self, name: str, args: list[str]) -> list[str]:
        self.before = self.fields()
        reply: bytes = self.scripts[name](keys=[self.name], args=args)
        return reply.decode().split()

    def _adapt(self, name: str, args: list[str]) -> float:
        now, iv, *tail = self.run(name, args)
        self.view.observe(float(now), float(now) / 1e6, float(iv), tail)
        self._note_change(float(now))
        return float(now)

    def _note_change(self, now: float) -> None:
        after = self.fields()
        if "iv" in self.before and after["iv"] != self.before["iv"]:
            self.changes.append(Change(int(after["ep"]), now, float(self.before["iv"]), float(after["iv"])))

    def throttle(self, round: int) -> float:
        return self._adapt("throttle", [*self.rate_and_capacity, *self.view.throttle_args(self.rate, round)])

    def recover(self) -> float:
        return self._adapt("recover", [*self.rate_and_capacity, *self.view.recover_args(self.rate)])

    def set_rate(self, value: float) -> float:
        return self._adapt("set_rate", [repr(self.rate), repr(value), str(self.capacity)])

    def reserve(self, tokens: int) -> Place:
        granted, wait, start, iv, ep, ahead, *_ = self.run("reserve", [*self.rate_and_capacity, str(tokens)])
        assert granted == "1"
        now = float(start) - float(ahead)
        self._note_change(now)
        # As RedisBucketBase._accept keeps it.
        return Place(float(start), float(start) + tokens * float(iv), now + float(wait), int(ep))

    def due(self, place: Place) -> Place:
        args = [*self.rate_and_capacity, repr(place.start), repr(place.end), repr(place.due), str(place.ep)]
        ep, start, end, due, _ = self.run("due", args)
        return Place(float(start), float(end), float(due), int(ep))

    def age(self, elapsed: float) -> float | None:
        """Move the last decrease ``elapsed`` seconds into the past; its new time (us), or None if none."""
        if not self.fields().get("ld"):
            return None
        seconds, micros = self.client.time()
        ld = seconds * 1e6 + micros - elapsed * 1e6
        self.client.hset(self.name, "ld", repr(ld))
        return ld

    def curve_span(self) -> float:
        """k + probe_time: seconds from the last decrease to the configured rate."""
        assert self.view.adaptive is not None
        return float(self.fields().get("k") or 0.0) + self.view.adaptive.probe_time


@pytest.fixture
def keys(redis_client: Any) -> Iterator[list[Key]]:
    made: list[Key] = []
    yield made
    for key in made:
        redis_client.delete(key.name)


def new_key(keys: list[Key], client: Any, rate: float, capacity: int, adaptive: AdaptiveRate) -> Key:
    key = Key(client, rate, capacity, adaptive)
    keys.append(key)
    return key


def stored_curve(fields: dict[str, str], configured: float, origin: float) -> CubicState:
    """The key's curve as ``_cubic`` keeps it, times in seconds from ``origin`` (microseconds).

    Without a decrease to recover from, ``wm`` and ``k`` mean nothing (Lua
    leaves the last ones there), so they read as ``_cubic`` writes them.
    """
    rate = min(float(fields.get("eff", configured)), configured)
    last_max = float(fields["lm"]) if fields.get("lm") else None
    if not fields.get("ld"):
        return CubicState(rate=rate, w_max=rate, last_max=last_max)
    return CubicState(
        rate=rate,
        w_max=float(fields["wm"]),
        last_decrease=(float(fields["ld"]) - origin) / 1e6,
        k=float(fields["k"]),
        last_max=last_max,
    )


def assert_same_curve(actual: CubicState, expected: CubicState) -> None:
    assert (actual.last_decrease is None, actual.last_max is None) == (
        expected.last_decrease is None,
        expected.last_max is None,
    )
    numbers = [(a, e) for a, e in zip(astuple(actual), astuple(expected), strict=True) if e is not None]
    assert [a for a, _ in numbers] == pytest.approx([e for _, e in numbers], rel=1e-12, abs=1e-12)


def assert_view_matches(key: Key) -> None:
    """The process's copy of the curve (SharedCurve) is the one stored in Redis."""
    fields, view = key.fields(), key.view
    assert view.rate == pytest.approx(min(float(fields.get("eff", key.rate)), key.rate), rel=1e-12)
    assert view.round == int(fields.get("rd", 0))
    if fields.get("ld"):
        assert view.curve is not None
        assert (view.curve.w_max, view.curve.k) == pytest.approx((float(fields["wm"]), float(fields["k"])), rel=1e-12)
    else:
        assert view.curve is None


# -- the shared curve is _cubic's -------------------------------------------


@PROPERTY
@given(
    adaptive=adaptive_rates(),
    rate=RATES,
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("throttle"), st.integers(0, 2)),  # the round: the key's, or 1-2 older
            st.tuples(st.just("recover"), ELAPSED),
            st.tuples(st.just("set"), SET_TO),
        ),
        max_size=12,
    ),
)
def test_the_throttle_script_cuts_as_cubic_on_throttle_once_per_round(
    redis_client: Any, keys: list[Key], adaptive: AdaptiveRate, rate: float, steps: list[tuple[str, float]]
) -> None:
    key = new_key(keys, redis_client, rate, 1, adaptive)
    for op, arg in [("throttle", 0), *steps]:
        if op == "recover":
            key.age(arg * key.curve_span())
            key.recover()
        elif op == "set":
            key.set_rate(rate * arg)
        else:
            round = max(0, key.view.round - int(arg))
            counts = key.view.begin_throttle(round)  # the bucket's own test: not an older round
            key.view.end_throttle(round)
            now = key.throttle(round)
            before, after = key.before, key.fields()
            if not counts:
                assert after == before
            else:
                assert int(after["rd"]) == int(before.get("rd", 0)) + 1  # TokenBucket: one more round
                expected = _cubic.on_throttle(adaptive, stored_curve(before, rate, now), rate, 0.0)
                assert_same_curve(stored_curve(after, rate, now), expected)
        assert_view_matches(key)


@PROPERTY
@given(
    adaptive=adaptive_rates(),
    rate=RATES,
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("recover"), ELAPSED),  # seconds on from the last step's (fraction of the curve)
            st.tuples(st.just("throttle"), st.just(0.0)),
            st.tuples(st.just("set"), SET_TO),
        ),
        max_size=14,
    ),
)
def test_the_recover_script_climbs_as_cubic_on_success(
    redis_client: Any, keys: list[Key], adaptive: AdaptiveRate, rate: float, steps: list[tuple[str, float]]
) -> None:
    key = new_key(keys, redis_client, rate, 1, adaptive)
    elapsed = 0.0
    for op, arg in [("throttle", 0.0), *steps]:
        if op == "throttle":
            key.throttle(key.view.round)
            elapsed = 0.0
        elif op == "set":  # a rate set on purpose holds: no decrease left to recover from
            key.set_rate(rate * arg)
            expected = CubicState(rate=min(rate * arg, rate), w_max=min(rate * arg, rate))
            assert_same_curve(stored_curve(key.fields(), rate, 0.0), expected)
        else:
            elapsed += arg * key.curve_span()
            ld = key.age(elapsed)
            now = key.recover()
            before, after = key.before, key.fields()
            origin = now if ld is None else ld
            expected = _cubic.on_success(adaptive, stored_curve(before, rate, origin), rate, (now - origin) / 1e6)
            assert_same_curve(stored_curve(after, rate, origin), expected)
        assert_view_matches(key)


@PROPERTY
@given(
    adaptive=adaptive_rates(),
    rate=RATES,
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("throttle"), st.integers(0, 1)),
            st.tuples(st.just("recover"), ELAPSED),
        ),
        max_size=12,
    ),
)
def test_the_key_follows_the_local_bucket_under_the_same_signals(
    redis_client: Any, keys: list[Key], adaptive: AdaptiveRate, rate: float, steps: list[tuple[str, float]]
) -> None:
    # The same signals, at the same times since the last decrease, to the
    # local bucket and to the key: the same effective rate after each.
    # (Not set_effective_rate: the local bucket recovers from a rate set on
    # purpose, by design; the Redis bucket holds it.)
    key = new_key(keys, redis_client, rate, 1, adaptive)
    clock = VirtualClock()
    local = TokenBucket(rate, adaptive=adaptive, clock=clock)
    cut_at, elapsed = clock.now, 0.0
    for op, arg in steps:
        if op == "throttle":
            older = int(arg) if key.view.round >= arg else 0
            key.throttle(key.view.round - older)
            local.record_throttle(local.round - 4 * older)
            if int(key.fields()["rd"]) > int(key.before.get("rd", 0)):
                cut_at, elapsed = clock.now, 0.0
        else:
            elapsed += arg * key.curve_span()
            ld = key.age(elapsed)
            now = key.recover()
            if ld is None:
                clock.advance(arg * adaptive.probe_time)
            else:
                elapsed = (now - ld) / 1e6
                clock.now = max(clock.now, cut_at + elapsed)
            local.record_success()
        shared = min(float(key.fields().get("eff", rate)), rate)
        assert local.effective_rate == pytest.approx(shared, rel=1e-9)


# -- a change of rate carries the schedule as _gcra.rescale -----------------

CHANGES = st.one_of(
    st.tuples(st.just("set"), SET_TO),
    st.tuples(st.just("throttle"), st.just(0.0)),
    st.tuples(st.just("recover"), ELAPSED),
)


def change(key: Key, op: str, arg: float) -> float:
    """One step that may change the rate; Redis's time when it ran (us)."""
    if op == "set":
        return key.set_rate(key.rate * arg)
    if op == "throttle":
        return key.throttle(key.view.round)
    key.age(arg * key.curve_span())
    return key.recover()


@PROPERTY
@given(
    adaptive=adaptive_rates(),
    rate=RATES,
    capacity=st.integers(1, 4),
    steps=st.lists(st.one_of(st.tuples(st.just("reserve"), st.integers(1, 4)), CHANGES), max_size=16),
)
def test_every_change_of_rate_carries_the_queue_as_gcra_rescale(
    redis_client: Any,
    keys: list[Key],
    adaptive: AdaptiveRate,
    rate: float,
    capacity: int,
    steps: list[tuple[str, float]],
) -> None:
    key = new_key(keys, redis_client, rate, capacity, adaptive)
    key.reserve(1)
    for op, arg in steps:
        if op == "reserve":
            key.reserve(min(int(arg), capacity))
            continue
        seen = len(key.changes)
        now = change(key, op, arg)
        before, after = key.before, key.fields()
        assert float(after["iv"]) == 1e6 / min(float(after.get("eff", rate)), rate)
        if len(key.changes) == seen:
            assert (after["tat"], after["ep"]) == (before["tat"], before["ep"])
            continue
        old, new = float(before["iv"]), float(after["iv"])
        assert float(after["tat"]) == _gcra.rescale(float(before["tat"]), now, old, new, capacity)
        assert int(after["ep"]) == int(before["ep"]) + 1
        kept = [tuple(entry.split(",")) for entry in after["rs"].split(";")]
        assert len(kept) == min(len(key.changes), _gcra.RESCALES)
        ep, when, was, to = kept[-1]
        assert (int(ep), float(when), float(was), float(to)) == key.changes[-1]


def carried(place: Place, changes: list[Change], capacity: int) -> Place:
    """Where ``place`` stands after ``changes``: ``_gcra.rescale`` through each one since its epoch.

    As far back as ``_gcra.RESCALES`` changes; a place made before more of
    them comes back as it was.
    """
    since = [c for c in changes if c.ep > place.ep]
    if not since or len(since) > _gcra.RESCALES:
        return place
    start, end, due = place.start, place.end, place.due
    for c in since:
        start = _gcra.rescale(start, c.when, c.old, c.new, capacity)
        end = _gcra.rescale(end, c.when, c.old, c.new, capacity)
        due = _gcra.rescale(due, c.when, c.old, c.new, 0)
    return Place(start, end, due, since[-1].ep)


@PROPERTY
@given(
    adaptive=adaptive_rates(),
    rate=st.sampled_from([1.0, 8.0, 50.0]),
    capacity=st.integers(1, 4),
    steps=st.lists(st.one_of(st.tuples(st.just("reserve"), st.integers(1, 4)), CHANGES), max_size=28),
)
def test_the_due_script_moves_a_reserved_slot_as_gcra_rescale(
    redis_client: Any,
    keys: list[Key],
    adaptive: AdaptiveRate,
    rate: float,
    capacity: int,
    steps: list[tuple[str, float]],
) -> None:
    key = new_key(keys, redis_client, rate, capacity, adaptive)
    places = [key.reserve(capacity)]
    for op, arg in steps:
        if op == "reserve":
            places.append(key.reserve(min(int(arg), capacity)))
        else:
            change(key, op, arg)
    for place in places:
        assert key.due(place) == carried(place, key.changes, capacity)


# -- one history bound ------------------------------------------------------


def test_lua_and_python_bound_the_history_of_rate_changes_alike() -> None:
    for name in ("reserve", "set_rate", "throttle", "recover", "due"):
        assert [int(n) for n in re.findall(r"^local RESCALES = (\d+)\b", SCRIPTS[name], re.M)] == [_gcra.RESCALES]


def test_the_due_script_carries_a_slot_through_rescales_changes_and_no_more(redis_client: Any, keys: list[Key]) -> None:
    key = new_key(keys, redis_client, 1.0, 1, AdaptiveRate())
    key.reserve(1)  # goes now
    queued = key.reserve(1)  # due in about a second: every change moves it
    for i in range(_gcra.RESCALES):
        key.set_rate(0.5 if i % 2 == 0 else 0.25)
    moved = key.due(queued)
    assert moved.ep == queued.ep + _gcra.RESCALES and moved.due > queued.due
    assert moved == carried(queued, key.changes, 1)
    key.set_rate(0.5)
    assert key.due(queued) == queued  # one change too many: it keeps its place
