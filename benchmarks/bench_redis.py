"""How much a Redis bucket costs over a bare Redis round trip, and what a lease saves.

Part 1 times, interleaved in one loop so that noise hits all of them alike:
``PING``, a trivial ``EVALSHA`` (``return 1``) and ``RedisTokenBucket.reserve()``
on a bucket that never makes anyone wait. The ratio of the medians is the
bucket's overhead on top of the round trip it cannot avoid (target <= 1.3x).

Part 2 paces one caller at a shared rate with and without ``lease``: the time
spent in ``reserve()`` per call, Redis round trips per call, and the rate
achieved, in alternating rounds.

Part 3 is part 1 on a Redis Cluster of three masters (started here; skipped
with ``--url``): ``EVALSHA 'return 1'`` with the bucket's key, which the
cluster client sends to the node owning its slot, against ``reserve()`` on a
bucket over ``redis.cluster.RedisCluster`` (target <= 1.3x).

Run: ``python benchmarks/bench_redis.py [--quick] [--url redis://...]``; without
``--url`` it starts its own ``redis-server`` on a free loopback port. Prints the
tables and writes ``benchmarks/results/bench_redis.json``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from _harness import write_json

from grpc_throttle.buckets.redis import RedisTokenBucket


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1000


def _interleaved(cases: dict[str, Callable[[], Any]], rounds: int, base: str, title: str) -> dict[str, float]:
    """Warm every case up, time them in ``rounds`` interleaved rounds and print them; their medians (µs)."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # connect, load scripts
        for _ in range(200):
            fn()
    for _ in range(rounds):
        for name, fn in cases.items():
            samples[name].append(_timed(fn))
    reference = statistics.median(samples[base])
    width = max(len(name) for name in cases) + 2
    print(f"\n{title}: {rounds} interleaved rounds (microseconds)")
    print(f"{'operation':<{width}}{'median':>9}{'p10':>9}{'p90':>9}{'vs EVALSHA':>12}")
    for name, values in samples.items():
        deciles = statistics.quantiles(values, n=10)
        median = statistics.median(values)
        print(f"{name:<{width}}{median:>9.1f}{deciles[0]:>9.1f}{deciles[-1]:>9.1f}{median / reference:>11.2f}x")
    return {name: statistics.median(values) for name, values in samples.items()}


def overhead(url: str, rounds: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    trivial = client.script_load("return 1")
    bucket = RedisTokenBucket.from_url(url, key=f"bench-{uuid.uuid4().hex}", rate=1e9, timeout=1.0)
    cases: dict[str, Callable[[], Any]] = {
        "PING": client.ping,
        "EVALSHA 'return 1'": lambda: client.evalsha(trivial, 0),
        "reserve()": bucket.reserve,
    }
    medians = _interleaved(cases, rounds, "EVALSHA 'return 1'", "Part 1")
    server = {}
    for name in ("EVALSHA 'return 1'", "reserve()"):
        client.config_resetstat()
        for _ in range(2000):
            cases[name]()
        server[name] = client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
    print(f"time spent inside Redis per call: {', '.join(f'{k} {v:.1f}us' for k, v in server.items())}")
    bucket.close()
    client.close()
    return {
        "rounds": rounds,
        "median_us": medians,
        "ratio_to_evalsha": medians["reserve()"] / medians["EVALSHA 'return 1'"],
        "inside_redis_us": server,
    }


def cluster_overhead(rounds: int) -> dict[str, Any]:
    import redis.cluster

    cluster = importlib.import_module("tests.redis_server").RedisCluster()
    cluster.start()
    try:
        nodes = [redis.cluster.ClusterNode(host, port) for host, port in cluster.startup_nodes]
        client = redis.cluster.RedisCluster(startup_nodes=nodes)
        bucket = RedisTokenBucket(client, key=f"bench-{uuid.uuid4().hex}", rate=1e9, timeout=1.0)
        bucket.reserve()  # scripts loaded on the owning node
        owner = client.get_node_from_key(bucket.key)
        trivial = client.script_load("return 1")  # loaded on every primary
        cases: dict[str, Callable[[], Any]] = {
            "EVALSHA 'return 1' (owning node)": lambda: client.evalsha(trivial, 1, bucket.key),
            "reserve()": bucket.reserve,
        }
        base = "EVALSHA 'return 1' (owning node)"
        medians = _interleaved(cases, rounds, base, f"Part 3: Redis Cluster (3 masters), key on {owner.name}")
        bucket.close()
        client.close()
        return {
            "rounds": rounds,
            "median_us": medians,
            "ratio_to_evalsha": medians["reserve()"] / medians[base],
        }
    finally:
        cluster.close()


def _evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def paced(url: str, rate: float, seconds: float, lease: int, client: redis.Redis) -> tuple[float, float, float, float]:
    bucket = RedisTokenBucket.from_url(url, key=f"bench-{uuid.uuid4().hex}", rate=rate, lease=lease, timeout=1.0)
    bucket.reserve()
    calls_before, spent, count = _evalsha_calls(client), [], 0
    started = time.monotonic()
    end = started + seconds
    while True:
        t0 = time.perf_counter_ns()
        reservation = bucket.reserve(max_wait=max(end - time.monotonic(), 0))
        spent.append((time.perf_counter_ns() - t0) / 1000)
        if reservation is None:
            break
        time.sleep(reservation.delay)
        count += 1
    elapsed = time.monotonic() - started
    trips = _evalsha_calls(client) - calls_before
    bucket.close()
    return statistics.median(spent), statistics.fmean(spent), trips / count, count / elapsed


def leases(url: str, rate: float, seconds: float, rounds: int, lease: int) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(url)
    rows: dict[int, list[tuple[float, float, float, float]]] = {1: [], lease: []}
    for _ in range(rounds):
        for n in rows:
            rows[n].append(paced(url, rate, seconds, n, client))
    print(f"\nPart 2: one caller paced at {rate:g}/s, {rounds} x {seconds:g}s rounds per setting (medians)")
    print(f"{'setting':<12}{'reserve() median us':>21}{'mean us':>10}{'trips/call':>12}{'rate /s':>10}")
    out = []
    for n, results in rows.items():
        cols = [statistics.median(r[i] for r in results) for i in range(4)]
        label = "no lease" if n == 1 else f"lease={n}"
        print(f"{label:<12}{cols[0]:>21.1f}{cols[1]:>10.1f}{cols[2]:>12.3f}{cols[3]:>10.1f}")
        out.append({"lease": n, "median_us": cols[0], "mean_us": cols[1], "trips_per_call": cols[2], "rate": cols[3]})
    client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an existing Redis (default: start a throwaway redis-server)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--lease", type=int, default=16)
    args = parser.parse_args()
    server: Any = None
    if args.url is None:  # tests/redis_server.py; _harness put the root on sys.path
        server = importlib.import_module("tests.redis_server").RedisServer()
        server.start()
    url = args.url or server.url
    try:
        print(f"redis-py {redis.__version__}, Redis at {url}")
        part1 = overhead(url, 500 if args.quick else args.rounds)
        part2 = leases(url, args.rate, 1.0, 1 if args.quick else 3, args.lease)
        results: dict[str, Any] = {"overhead": part1, "lease": {"rate": args.rate, "rows": part2}}
        if server is not None:
            results["cluster_overhead"] = cluster_overhead(500 if args.quick else args.rounds)
        write_json("bench_redis", results)
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
