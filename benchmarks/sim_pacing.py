"""A virtual-clock replay of bench_goodput's batch and bench_adaptive's scenarios.

Not a benchmark: a model for designing the schedule. Real gRPC costs minutes
per run and its noise hides a 2 % change; this replays the same workloads in
well under a second, deterministically (seeded), so a change to burst
learning or adaptation can be compared on every scenario at once. The real
numbers in the README come from bench_goodput.py and bench_adaptive.py; this
model agreed with them within a few percent when it was made (strict server
2.07x vs 2.03x measured, 0.7 Q server 1.8 % vs 2.2 % throttled).

Each client thread takes the next call, reserves on its own ``TokenBucket``
(on the simulated clock), waits until the reservation is due, and sends. The
request and the answer each take 0.5 ms plus an exponential delay (mean
``--jitter``), so two calls sent 1/Q apart may arrive closer than that. The
server is one of the emulator's quotas (``grpc_throttle.testing.quota``). A
throttled answer is reported to the bucket and retried after full-jitter
back-off (1 s, doubling; 5 attempts), as the interceptor does by default.

    python benchmarks/sim_pacing.py                  # every scenario, 8 seeds
    python benchmarks/sim_pacing.py --jitter 0.0005 tb1 2proc
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import statistics
from collections.abc import Callable
from typing import Any

from grpc_throttle import TokenBucket
from grpc_throttle.testing.quota import Quota, TokenBucketQuota, make_quota

#: name -> (server for quota Q, processes, rate the server allows as a fraction of Q, server burst or None for Q)
SCENARIOS: dict[str, tuple[Callable[[float], Quota], int, float, float | None]] = {
    "tbQ": (lambda q: TokenBucketQuota(q, q), 1, 1.0, None),
    "tb1": (lambda q: TokenBucketQuota(q, 1), 1, 1.0, 1.0),
    "fixed": (lambda q: make_quota("fixed-window", q), 1, 1.0, None),
    "sliding": (lambda q: make_quota("sliding-window", q), 1, 1.0, None),
    "tb07": (lambda q: TokenBucketQuota(0.7 * q, 0.7 * q), 1, 0.7, None),
    "2proc": (lambda q: TokenBucketQuota(q, q), 2, 1.0, None),
}


class _Loop:
    """Events on a simulated clock, in time order."""

    def __init__(self, seed: int, jitter: float) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.random = random.Random(seed)
        self._jitter = jitter

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), action))

    def latency(self) -> float:
        return 0.0005 + self.random.expovariate(1 / self._jitter)

    def run(self) -> None:
        while self._queue:
            self.now, _, action = heapq.heappop(self._queue)
            action()


def run(
    scenario: str, *, rate: float, calls: int, threads: int, seed: int, jitter: float, bucket: dict[str, Any]
) -> dict[str, float]:
    """One run: wall time against the ideal, and the share of requests answered throttled."""
    make_server, processes, share, burst = SCENARIOS[scenario]
    loop = _Loop(seed, jitter)
    server = make_server(rate)
    counts = {"sent": 0, "throttled": 0, "lost": 0, "last": 0.0}

    def client(limiter: TokenBucket, left: list[int]) -> Callable[[], None]:
        def next_call() -> None:
            if left[0] > 0:
                left[0] -= 1
                attempt(1)

        def attempt(number: int) -> None:
            reservation = limiter.reserve()
            assert reservation is not None

            def answer(admitted: bool) -> None:
                if admitted:
                    limiter.record_success()
                    counts["last"] = loop.now
                    next_call()
                    return
                counts["throttled"] += 1
                limiter.record_throttle(reservation.round)
                if number >= 5:
                    counts["lost"] += 1
                    next_call()
                    return
                backoff = loop.random.random() * min(15.0, 2.0 ** (number - 1))
                loop.at(loop.now + backoff, lambda: attempt(number + 1))

            def arrive() -> None:
                admitted = server.admit(loop.now)
                loop.at(loop.now + loop.latency(), lambda: answer(admitted))

            def wake() -> None:
                due = reservation.due_in()
                if due > 0:
                    loop.at(loop.now + due, wake)
                    return
                counts["sent"] += 1
                loop.at(loop.now + loop.latency(), arrive)

            loop.at(loop.now + reservation.delay, wake)

        return next_call

    for _ in range(processes):
        limiter = TokenBucket(rate=rate, clock=lambda: loop.now, **bucket)
        left = [calls // processes]
        for _ in range(threads // processes):
            loop.at(loop.random.random() * 0.001, client(limiter, left))
    loop.run()
    allowed = rate * share
    ideal = (calls - (allowed if burst is None else burst)) / allowed
    return {
        "wall_ratio": counts["last"] / ideal,
        "throttled": counts["throttled"] / counts["sent"],
        "lost": counts["lost"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "scenarios", nargs="*", metavar="scenario", help=f"any of {', '.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--jitter", type=float, default=0.0015, help="mean extra one-way delay, seconds")
    parser.add_argument("--burst", type=float, default=None, help="declare this burst on every bucket")
    args = parser.parse_args()
    if args.calls < 1 or args.threads < 1 or args.seeds < 1 or not args.jitter > 0:
        parser.error("--calls, --threads and --seeds must be at least 1, and --jitter above 0")
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}: choose from {', '.join(SCENARIOS)}")
    bucket: dict[str, Any] = {} if args.burst is None else {"burst": args.burst}
    print(f"{'scenario':10} {'wall/ideal':>10} {'throttled':>10} {'lost':>5}   (median of {args.seeds} seeds)")
    for scenario in args.scenarios or SCENARIOS:
        try:
            runs = [
                run(
                    scenario,
                    rate=args.rate,
                    calls=args.calls,
                    threads=args.threads,
                    seed=seed,
                    jitter=args.jitter,
                    bucket=bucket,
                )
                for seed in range(1, args.seeds + 1)
            ]
        except ValueError as error:  # a bad --rate or --burst, as TokenBucket names it
            parser.error(str(error))
        wall = statistics.median(r["wall_ratio"] for r in runs)
        throttled = statistics.median(r["throttled"] for r in runs)
        lost = sum(r["lost"] for r in runs)
        print(f"{scenario:10} {wall:10.3f} {throttled * 100:9.1f}% {lost:5.0f}")


if __name__ == "__main__":
    main()
