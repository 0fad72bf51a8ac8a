"""Goodput of 4 processes sharing one quota: one RedisTokenBucket vs a TokenBucket per process.

The Clarifai emulator runs in a child process enforcing Q requests/s for one
user (token bucket policy; burst 1, then burst Q). Four client processes of
four threads each make ``--calls`` ``ListModelTypes`` calls between them (a
quarter each) as that one user, every process through its own
``ThrottlingInterceptor``, all other settings default:

- shared Redis: ``RedisTokenBucket(key=same, rate=Q)`` in every process;
- shared Redis, capacity=Q: the same with the burst the server allows (burst-Q row only);
- shared Redis, capacity=Q + Limit(Q, 1 s): that burst, and at most Q sends in
  any second (``limits=``), the schedule that fits a server counting a 1 s
  window (burst-Q rows, every deployment);
- unshared local: ``TokenBucket(rate=Q)`` in every process, i.e. 4·Q offered.

Ideal wall time, for a client that gets every call through: (calls - B) / Q
for a server burst B. Answered throttled: the server's throttled answers over
all requests it received, retries included. Lost: calls that did not end in
SUCCESS (a throttled answer handed back after the last attempt, an error, or a
call not started when the run's time budget ran out).

Deployments (``--deployments``, default all three):

- standalone: one ``redis-server`` (or ``--url``), every row above;
- cluster: three masters (``redis.cluster.RedisCluster`` in every process),
  shared Redis against the burst-Q server;
- sentinel-failover: one master, one replica, three sentinels
  (``redis+sentinel://`` URL); ``SENTINEL FAILOVER`` halfway through every
  run. Shared Redis against the burst-Q server.

Every attempt's send time is recorded below the interceptor, in every process;
"most in 1 s" is the most attempts of all processes in any 1 s window, which
must stay within Q plus the bucket's burst, the failover included.

Run: ``python benchmarks/bench_redis_goodput.py [--quick] [--rate 50] [--calls 800]
[--repeat 3] [--url redis://...] [--deployments standalone,cluster,sentinel-failover]``;
it starts its own servers. Prints a markdown table and writes
``benchmarks/results/bench_redis_goodput.json``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import multiprocessing
import threading
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

import _harness as h
import grpc

from grpc_throttle.testing import ControlClient
from tests.arrivals import most_in_any_window  # _harness put the repository on sys.path

DEPLOYMENTS = ("standalone", "cluster", "sentinel-failover")

SUCCESS = 10000
METADATA = (("authorization", "Key bench-redis"),)
CLIENTS = ("shared Redis", "shared Redis, capacity=Q", "shared Redis, capacity=Q + Limit(Q, 1 s)", "unshared local")
TARGETS = "wall <= 1.05 x ideal, <= 0.5% answered throttled, nothing lost, most in 1 s <= Q + burst"


class _Attempts(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """A client interceptor below ours: the send time of every attempt (retries included)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.times.append(time.time())  # list.append is atomic under the GIL
        return continuation(details, request)


def _redis_bucket(where: dict[str, Any], key: str, rate: float, capacity: float | None, limits: list[Any]) -> Any:
    from grpc_throttle.buckets.redis import RedisTokenBucket

    if where["kind"] == "cluster":
        import redis.cluster

        nodes = [redis.cluster.ClusterNode(host, port) for host, port in where["nodes"]]
        client = redis.cluster.RedisCluster(startup_nodes=nodes)
        return RedisTokenBucket(client, key=key, rate=rate, capacity=capacity, limits=limits)
    return RedisTokenBucket.from_url(where["url"], key=key, rate=rate, capacity=capacity, limits=limits)


def client_process(
    conn: Connection, target: str, where: dict[str, Any], key: str, client: str, settings: dict[str, Any]
) -> None:
    """Child process: one interceptor over its bucket, ``threads`` threads, ``calls`` calls."""
    import grpc

    from grpc_throttle import Limit, ThrottlingInterceptor, TokenBucket

    service_pb2, service_pb2_grpc = h.clarifai_stubs()
    rate, calls, threads = settings["rate"], settings["calls"], settings["threads"]
    capacity = rate if "capacity" in client else None
    limits = [Limit(round(rate), 1.0)] if "Limit" in client else []
    bucket: Any
    if client.startswith("shared"):
        bucket = _redis_bucket(where, key, rate, capacity, limits)
        bucket.available()  # connected, scripts loaded
    else:
        bucket = TokenBucket(rate=rate, capacity=capacity)
    interceptor = ThrottlingInterceptor(bucket)
    raw = grpc.insecure_channel(target)
    grpc.channel_ready_future(raw).result(timeout=30)  # connect without spending quota
    attempts = _Attempts()
    channel = grpc.intercept_channel(grpc.intercept_channel(raw, attempts), interceptor)
    method = service_pb2_grpc.V2Stub(channel).ListModelTypes
    request = service_pb2.ListModelTypesRequest()
    conn.send("ready")
    start, stop_at = conn.recv()
    lock = threading.Lock()
    left, ok, cut, latencies, errors = calls, 0, False, [], []
    fell_back = False

    def work() -> None:
        nonlocal left, ok, cut, fell_back
        while time.time() < start:
            time.sleep(0.0005)
        while True:
            with lock:
                if left <= 0:
                    return
                if time.time() > stop_at:
                    cut = True
                    return
                left -= 1
            began = time.time()
            try:
                good = method(request, metadata=METADATA, timeout=settings["call_timeout"]).status.code == SUCCESS
            except grpc.RpcError as error:
                good = False
                errors.append(f"{error.code()}")
            with lock:
                latencies.append(time.time() - began)
                ok += good
                fell_back = fell_back or not getattr(bucket, "shared", True)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stats = interceptor.stats()
    conn.send(
        {
            "end": time.time(),
            "ok": ok,
            "cut": cut,
            "latencies": latencies,
            "errors": errors[:3],
            "retries": stats.retries,
            "effective_rate": stats.effective_rate,
            "fell_back": fell_back,
            "attempts": attempts.times,
        }
    )
    raw.close()
    if hasattr(bucket, "close"):
        bucket.close()


def one_run(
    client: str,
    target: str,
    where: dict[str, Any],
    args: argparse.Namespace,
    budget: float,
    failover: Any = None,
) -> dict[str, Any]:
    """One run; ``failover`` (a deployment) gets ``SENTINEL FAILOVER`` halfway through the ideal time."""
    context = multiprocessing.get_context("spawn")
    key = f"bench-goodput-{uuid.uuid4().hex[:12]}"
    settings = {
        "rate": args.rate,
        "calls": args.calls // args.processes,
        "threads": args.threads,
        "call_timeout": args.call_timeout,
    }
    pipes, processes = [], []
    for _ in range(args.processes):
        parent, child = context.Pipe()
        process = context.Process(
            target=client_process, args=(child, target, where, key, client, settings), daemon=True
        )
        process.start()
        pipes.append(parent)
        processes.append(process)
    try:
        for parent in pipes:
            if not parent.poll(120) or parent.recv() != "ready":
                raise RuntimeError("a client process did not start")
        if failover is not None:  # the last run's failover over (the old master a replica, in sync):
            failover.wait_in_sync(sentinels=True)  # else this run's would start late, or after the run
        with ControlClient(target) as control:
            control.reset()
            start = time.time() + 0.5
            for parent in pipes:
                parent.send((start, start + budget))
            failed_over: dict[str, float] = {}
            switch = None
            if failover is not None:

                def switch_master() -> None:
                    time.sleep(max(start - time.time(), 0.0) + (args.calls - args.rate) / args.rate / 2)
                    began = time.time()
                    failover.failover()
                    failed_over.update(at_s=began - start, took_s=time.time() - began)

                switch = threading.Thread(target=switch_master, daemon=True)
                switch.start()
            results = [parent.recv() for parent in pipes]
            if switch is not None:
                switch.join(60)
            counters = control.counters()
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    calls = settings["calls"] * args.processes
    sent = counters.admitted + counters.throttled
    latencies = [x for r in results for x in r["latencies"]]
    return {
        "wall_s": max(r["end"] for r in results) - start,
        "cut_at_budget": any(r["cut"] for r in results),
        "sent": sent,
        "admitted": counters.admitted,
        "throttled": counters.throttled,
        "throttled_share": counters.throttled / sent if sent else math.nan,
        "lost": calls - sum(r["ok"] for r in results),
        "retries": sum(r["retries"] for r in results),
        "fell_back_to_local": sum(r["fell_back"] for r in results),
        "effective_rates_at_end": [r["effective_rate"] for r in results],
        "p50_s": h.percentile(latencies, 50),
        "p99_s": h.percentile(latencies, 99),
        "most_in_1s": most_in_any_window([t for r in results for t in r["attempts"]], 1.0),
        "failover": failed_over,
        "errors": [e for r in results for e in r["errors"]][:3],
    }


METRICS = ("wall_s", "sent", "throttled_share", "lost", "retries", "p50_s", "p99_s", "most_in_1s")


def _start(deployment: str, url: str | None) -> tuple[Any, dict[str, Any]]:
    """Start ``deployment``'s servers: (the object to close, where the clients connect)."""
    servers = importlib.import_module("tests.redis_server")  # _harness put the repository on sys.path
    if deployment == "standalone":
        if url is not None:
            return None, {"kind": "url", "url": url}
        server = servers.RedisServer()
        server.start()
        return server, {"kind": "url", "url": server.url}
    if deployment == "cluster":
        cluster = servers.RedisCluster()
        cluster.start()
        return cluster, {"kind": "cluster", "nodes": cluster.startup_nodes}
    sentinel = importlib.import_module("tests.redis_deployments").RedisSentinel()
    sentinel.start()
    return sentinel, {"kind": "url", "url": sentinel.url}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (200 calls, 1 repeat)")
    parser.add_argument("--rate", type=float, default=50.0, help="Q: the server's quota and every bucket's rate")
    parser.add_argument("--calls", type=int, default=None, help="calls per run, all processes (default 800)")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4, help="threads per process")
    parser.add_argument("--repeat", type=int, default=None, help="runs per row and client (default 3)")
    parser.add_argument("--call-timeout", type=float, default=60.0, help="deadline of each call, retries included")
    parser.add_argument("--budget", type=float, default=4.0, help="stop a run after this many x ideal + 10 s")
    parser.add_argument("--url", help="an existing Redis for the standalone rows (default: start one)")
    parser.add_argument(
        "--deployments", default=",".join(DEPLOYMENTS), help=f"comma-separated, of {', '.join(DEPLOYMENTS)}"
    )
    args = parser.parse_args()
    deployments = [d.strip() for d in args.deployments.split(",") if d.strip()]
    unknown = [d for d in deployments if d not in DEPLOYMENTS]
    if unknown or not deployments:
        parser.error(f"--deployments takes {', '.join(DEPLOYMENTS)}; got {args.deployments!r}")
    if not args.rate > 0 or args.processes < 1 or args.threads < 1:
        parser.error("--rate must be above 0, --processes and --threads at least 1")
    args.calls = args.calls or (200 if args.quick else 800)
    repeat = args.repeat or (1 if args.quick else 3)
    q = args.rate
    print(f"# bench_redis_goodput: Q={q:g}/s, {args.calls} calls, {args.processes} processes x {args.threads} threads")
    print(f"# median of {repeat} runs; targets for shared Redis: {TARGETS}\n")
    results: list[dict[str, Any]] = []
    for deployment in deployments:
        servers, where = _start(deployment, args.url)
        try:
            for burst in (1.0, q) if deployment == "standalone" else (q,):
                label = f"token-bucket, burst {burst:g}"
                best = max(args.calls - burst, 0) / q
                budget = args.budget * max(best, 1.0) + 10
                clients = [c for c in CLIENTS if burst > 1 or "capacity" not in c]
                if deployment != "standalone":
                    clients = ["shared Redis", "shared Redis, capacity=Q + Limit(Q, 1 s)"]
                runs: dict[str, list[dict[str, Any]]] = {c: [] for c in clients}
                failover = servers if deployment == "sentinel-failover" else None
                with h.ServerProcess(h.serve_emulator, q, "token-bucket", burst, 64) as emulator:
                    for index in range(repeat):
                        for client in h.rotated(clients, index):
                            run = one_run(client, emulator.target, where, args, budget, failover)
                            runs[client].append(run)
                            moved = run["failover"]
                            print(
                                f"  {deployment:<17} {label:<22} {client:<26} wall {run['wall_s']:6.2f} s  "
                                f"throttled {run['throttled_share'] * 100:5.1f}%  lost {run['lost']}  "
                                f"most in 1 s {run['most_in_1s']}"
                                + (
                                    f"  failover at {moved['at_s']:.1f} s took {moved['took_s']:.2f} s" if moved else ""
                                ),
                                flush=True,
                            )
                for client in clients:
                    summary: dict[str, Any] = {m: h.median([r[m] for r in runs[client]]) for m in METRICS}
                    summary["cut_at_budget"] = sum(r["cut_at_budget"] for r in runs[client])
                    summary["fell_back_to_local"] = sum(r["fell_back_to_local"] for r in runs[client])
                    results.append(
                        {
                            "deployment": deployment,
                            "policy": label,
                            "client": client,
                            "ideal_s": best,
                            **summary,
                            "runs": runs[client],
                        }
                    )
        finally:
            if servers is not None:
                servers.close()
    print()
    headers = ["deployment", "server policy", "client", "wall s", "ideal s", "wall/ideal", "answered throttled"]
    headers += ["lost", "retries", "p50 s", "p99 s", "most in 1 s"]
    rows = [
        [
            r["deployment"],
            r["policy"],
            r["client"],
            f"{r['wall_s']:.2f}" + (f" (cut in {r['cut_at_budget']})" if r["cut_at_budget"] else ""),
            f"{r['ideal_s']:.2f}",
            f"{r['wall_s'] / r['ideal_s']:.3f}" if r["ideal_s"] > 0 else "—",
            f"{r['throttled_share'] * 100:.2f}% ({r['sent']:.0f} sent)",
            f"{r['lost']:.0f}",
            f"{r['retries']:.0f}",
            f"{r['p50_s']:.2f}",
            f"{r['p99_s']:.2f}",
            f"{r['most_in_1s']:.0f}",
        ]
        for r in results
    ]
    print(h.table(headers, rows))
    print()
    for r in results:
        if r["client"].startswith("shared"):
            burst = q if "capacity" in r["client"] else 1.0
            verdict = {
                "wall <= 1.05 x ideal": r["wall_s"] <= 1.05 * r["ideal_s"],
                "<= 0.5% throttled": r["throttled_share"] <= 0.005,
                "nothing lost": r["lost"] == 0,
                "most in 1 s <= Q + burst": all(run["most_in_1s"] <= q + burst for run in r["runs"]),
            }
            r["targets"] = verdict
            said = ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in verdict.items())
            print(f"{r['client']} on {r['deployment']}, {r['policy']}: {said}")
    config = {k: v for k, v in vars(args).items() if k not in ("quick", "url")} | {"repeat": repeat}
    path = h.write_json("bench_redis_goodput", {"config": config, "results": results})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
