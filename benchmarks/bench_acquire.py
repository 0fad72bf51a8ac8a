"""The token-acquire fast path of grpc-throttle's TokenBucket against other Python rate limiters.

Every limiter is set so far above the load (10**9 per second, burst 10**9)
that every acquire succeeds: this times the bookkeeping alone. Variants run in
interleaved rounds (each round builds fresh limiters, then times every variant
in a rotated order with a ``timeit`` loop), and the table shows the median
nanoseconds per operation over the rounds and the ratio to the fastest
synchronous peer.

aiolimiter has only an async API: it is timed as ``await limiter.acquire()`` in
a loop inside one coroutine, which includes the cost of awaiting a coroutine
(the "reference" row shows that cost alone).

Run: ``python benchmarks/bench_acquire.py [--quick] [--rounds N] [--breakdown] [--profile]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import pstats
import threading
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _harness as h

HUGE = 10**9


@dataclass(frozen=True)
class Variant:
    name: str
    library: str
    #: "ours", "peer" (synchronous), "async peer" or "reference".
    kind: str
    #: Builds a fresh limiter: returns (operation, granted(result) -> bool, close).
    build: Callable[[], tuple[Callable[[], Any], Callable[[Any], bool], Callable[[], None]]]

    @property
    def is_async(self) -> bool:
        return self.kind in ("async peer", "reference")


def _none() -> None:
    return None


def _ours_try() -> Any:
    from grpc_throttle import TokenBucket

    return TokenBucket(rate=HUGE, capacity=HUGE).try_acquire, bool, _none


def _ours_reserve() -> Any:
    from grpc_throttle import TokenBucket

    return TokenBucket(rate=HUGE, capacity=HUGE).reserve, lambda r: r is not None and r.delay == 0, _none


def _token_bucket() -> Any:
    import token_bucket

    limiter = token_bucket.Limiter(HUGE, HUGE, token_bucket.MemoryStorage())
    return functools.partial(limiter.consume, "bench"), bool, _none


def _pyrate(kind: str) -> Any:
    import pyrate_limiter as pr

    if kind == "token":
        limiter = pr.limiter_factory.create_token_bucket_limiter(HUGE, pr.Duration.SECOND, burst=HUGE)
    else:
        limiter = pr.Limiter(pr.InMemoryBucket([pr.Rate(HUGE, pr.Duration.SECOND)]))
    return functools.partial(limiter.try_acquire, "bench", blocking=False), lambda r: r is True, limiter.close


def _limits(strategy: str) -> Any:
    import limits
    import limits.storage
    import limits.strategies

    limiter = getattr(limits.strategies, f"{strategy}RateLimiter")(limits.storage.MemoryStorage())
    return functools.partial(limiter.hit, limits.RateLimitItemPerSecond(HUGE), "bench"), bool, _none


def _throttled() -> Any:
    import throttled

    limiter = throttled.Throttled(
        key="bench",
        using=throttled.RateLimiterType.TOKEN_BUCKET.value,
        quota=throttled.per_sec(HUGE, burst=HUGE),
        store=throttled.MemoryStore(),
    )
    return limiter.limit, lambda r: not r.limited, _none


def _aiolimiter() -> Any:
    import aiolimiter

    return aiolimiter.AsyncLimiter(HUGE, 1).acquire, lambda r: r is None, _none


async def _noop() -> None:
    return None


VARIANTS = [
    Variant("TokenBucket.try_acquire()", "grpc-throttle", "ours", _ours_try),
    Variant("TokenBucket.reserve()", "grpc-throttle", "ours", _ours_reserve),
    Variant("Limiter.consume(key), MemoryStorage", "token-bucket", "peer", _token_bucket),
    Variant("Limiter.try_acquire, token bucket (GCRA state)", "pyrate-limiter", "peer", lambda: _pyrate("token")),
    Variant("Limiter.try_acquire, InMemoryBucket (log)", "pyrate-limiter", "peer", lambda: _pyrate("log")),
    Variant("FixedWindowRateLimiter.hit", "limits", "peer", lambda: _limits("FixedWindow")),
    Variant("SlidingWindowCounterRateLimiter.hit", "limits", "peer", lambda: _limits("SlidingWindowCounter")),
    Variant("MovingWindowRateLimiter.hit", "limits", "peer", lambda: _limits("MovingWindow")),
    Variant("Throttled.limit(), token bucket, MemoryStore", "throttled-py", "peer", _throttled),
    Variant("await AsyncLimiter.acquire()", "aiolimiter", "async peer", _aiolimiter),
    Variant("await <coroutine returning None>", "(asyncio floor)", "reference", lambda: (_noop, lambda r: True, _none)),
]


def _time_async(loop: asyncio.AbstractEventLoop, op: Callable[[], Any], number: int) -> float:
    async def run() -> float:
        started = time.perf_counter()
        for _ in range(number):
            await op()
        return time.perf_counter() - started

    enabled = gc.isenabled()
    gc.disable()  # as timeit does
    try:
        return loop.run_until_complete(run())
    finally:
        if enabled:
            gc.enable()


def _time(variant: Variant, op: Callable[[], Any], number: int, loop: asyncio.AbstractEventLoop) -> float:
    if variant.is_async:
        return _time_async(loop, op, number)
    return timeit.Timer(op).timeit(number)


def _check(variant: Variant, op: Callable[[], Any], granted: Callable[[Any], bool], loop: Any) -> None:
    for _ in range(100):
        result = loop.run_until_complete(op()) if variant.is_async else op()
        if not granted(result):
            raise RuntimeError(f"{variant.library} {variant.name}: an acquire was refused ({result!r})")


def run(rounds: int, target_s: float) -> dict[str, Any]:
    loop = asyncio.new_event_loop()
    numbers: dict[str, int] = {}
    for variant in VARIANTS:  # check every acquire succeeds, then size each loop to ~target_s
        op, granted, close = variant.build()
        _check(variant, op, granted, loop)
        number = 1000
        while (elapsed := _time(variant, op, number, loop)) < target_s / 4:
            number *= 4
        numbers[variant.name] = max(1000, int(number * target_s / elapsed))
        close()
    samples: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    for round_no in range(rounds):
        built = [(v, v.build()) for v in VARIANTS]
        for variant, (op, _, _) in h.rotated(built, round_no):
            number = numbers[variant.name]
            samples[variant.name].append(_time(variant, op, number, loop) / number * 1e9)
        for _, (_, _, close) in built:
            close()
    loop.close()
    medians = {name: h.median(values) for name, values in samples.items()}
    return {"samples_ns": samples, "median_ns": medians, "ops_per_sample": numbers}


def report(result: dict[str, Any]) -> dict[str, Any]:
    medians = result["median_ns"]
    sync_peers = [v for v in VARIANTS if v.kind == "peer"]
    all_peers = [v for v in VARIANTS if v.kind in ("peer", "async peer")]
    fastest = min(sync_peers, key=lambda v: medians[v.name])
    fastest_any = min(all_peers, key=lambda v: medians[v.name])
    rows = []
    for v in sorted(VARIANTS, key=lambda v: medians[v.name]):
        values = result["samples_ns"][v.name]
        spread = f"{h.percentile(values, 25):,.0f}-{h.percentile(values, 75):,.0f}"
        ratio = medians[v.name] / medians[fastest.name]
        rows.append([v.library, v.name, v.kind, f"{medians[v.name]:,.0f}", spread, f"{ratio:.2f}"])
    print(h.table(["library", "operation", "kind", "median ns/op", "p25-p75", "x fastest sync peer"], rows))
    summary = {
        "fastest_sync_peer": f"{fastest.library}: {fastest.name}",
        "fastest_peer_incl_async": f"{fastest_any.library}: {fastest_any.name}",
    }
    for v in VARIANTS:
        if v.kind == "ours":
            summary[f"ratio {v.name} / fastest sync peer"] = medians[v.name] / medians[fastest.name]
            summary[f"ratio {v.name} / fastest peer incl. async"] = medians[v.name] / medians[fastest_any.name]
    print(f"\nfastest synchronous peer: {fastest.library} {fastest.name} ({medians[fastest.name]:,.0f} ns)")
    for key, value in summary.items():
        if key.startswith("ratio"):
            print(f"{key}: {value:.2f}")
    return summary


def breakdown(target_s: float) -> dict[str, float]:
    """Times the Python primitives a lock-protected acquire is made of (context for a profile)."""
    lock = threading.Lock()

    def with_lock() -> None:
        with lock:
            pass

    def acquire_release() -> None:
        lock.acquire()
        try:
            pass
        finally:
            lock.release()

    class Seven:
        __slots__ = ("a", "b", "c", "d", "e", "f", "g")

        def __init__(self, a: Any, b: Any, c: Any, d: Any, e: Any, f: Any, g: Any) -> None:
            self.a, self.b, self.c, self.d, self.e, self.f, self.g = a, b, c, d, e, f, g

    def six_args_tuple(a: float, b: float, c: float, d: float, e: float, f: float) -> tuple[float, float, float]:
        return a, b, c

    cases: dict[str, Callable[[], Any]] = {
        "call of an empty function": _none,
        "time.monotonic()": time.monotonic,
        "with lock: pass": with_lock,
        "lock.acquire(); try/finally lock.release()": acquire_release,
        "Seven-slot object via __init__": lambda: Seven(1, 2, 3, 4, 5, 6, 7),
        "module function, 6 args, returns a 3-tuple": lambda: six_args_tuple(1.0, 2.0, 3.0, 4.0, 5.0, 6.0),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    number = max(1000, int(target_s * 2e6))
    for round_no in range(9):
        for name, fn in h.rotated(list(cases.items()), round_no):
            samples[name].append(timeit.Timer(fn).timeit(number) / number * 1e9)
    medians = {name: h.median(v) for name, v in samples.items()}
    print("\nPrimitives (median ns per call, each includes one Python call):")
    print(h.table(["primitive", "ns"], [[name, f"{ns:,.0f}"] for name, ns in medians.items()]))
    return medians


def profile(calls: int) -> None:
    """cProfile of try_acquire and reserve loops: which functions the fast path calls."""
    from grpc_throttle import TokenBucket

    bucket = TokenBucket(rate=HUGE, capacity=HUGE)
    for name in ("try_acquire", "reserve"):
        op = getattr(bucket, name)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            op()
        profiler.disable()
        print(f"\ncProfile, {calls:,} x TokenBucket.{name}() (profiler overhead inflates the times):")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 21, quick 3)")
    parser.add_argument("--sample-ms", type=float, default=None, help="time per sample (default 40, quick 5)")
    parser.add_argument("--breakdown", action="store_true", help="also time the primitives an acquire is made of")
    parser.add_argument("--profile", action="store_true", help="also cProfile our try_acquire/reserve")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 21)
    target_s = (args.sample_ms or (5 if args.quick else 40)) / 1000
    print(f"# bench_acquire: {rounds} interleaved rounds, ~{target_s * 1000:g} ms per sample\n")
    result = run(rounds, target_s)
    summary = report(result)
    extra: dict[str, Any] = {}
    if args.breakdown:
        extra["primitives_ns"] = breakdown(target_s)
    if args.profile:
        profile(20_000 if args.quick else 200_000)
    variants = [{"name": v.name, "library": v.library, "kind": v.kind} for v in VARIANTS]
    path = h.write_json("bench_acquire", {"rounds": rounds, "variants": variants, **result, **summary, **extra})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
