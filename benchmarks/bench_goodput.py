"""Goodput against a server that enforces Q requests/s: grpc-throttle vs no help vs the documented recipe.

The Clarifai emulator runs in a child process with one quota policy at a time
(token bucket with burst Q, token bucket with burst 1, fixed window of Q per
calendar second). Each client makes ``--calls`` ``ListModelTypes`` calls from
``--threads`` threads as one user (``authorization: Key bench``); the server's
counters are reset before each run and read after it through ``ControlClient``.

Clients: grpc-throttle (``ThrottlingInterceptor(TokenBucket(rate=Q))``, all
other settings default) through ``grpc.intercept_channel``; the same with
``capacity=Q`` (for reference: the documented way to use a burst the server is
known to allow); a bare channel that never retries; Clarifai's documented recipe
(on status 11005 sleep, then retry; 15 s in the docs, ``--recipe-wait`` here).

The fair ideal wall time, for a client that gets every call through:
- token bucket with burst B: (calls - B) / Q. The server admits B at once, then
  one every 1/Q seconds.
- fixed window of L = floor(Q) per calendar second: ceil(calls / L) - 1. A
  client cannot see where the server's second starts, so it can only keep every
  1-s span at or below L: one window's worth at once, then L per second. (A client
  that knew the phase could finish up to 1 s earlier; that optimum is in the
  JSON as ``ideal_phase_aware_s``.)

Run: ``python benchmarks/bench_goodput.py [--quick] [--rate 50] [--calls 500] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import _harness as h
import grpc

import grpc_throttle
from grpc_throttle.testing import ControlClient

SUCCESS, CONN_THROTTLED = 10000, 11005
METADATA = (("authorization", "Key bench"),)


def ideal(policy: str, burst: float | None, rate: float, calls: int) -> float:
    if policy == "token-bucket":
        return max(calls - (rate if burst is None else burst), 0) / rate
    return float(math.ceil(calls / math.floor(rate)) - 1)


class Run:
    """One batch of calls from several threads; ``call()`` returns True for a SUCCESS answer."""

    def __init__(self, call: Callable[[], bool], calls: int, threads: int, stop_at: float) -> None:
        self._call = call
        self._left = calls
        self._lock = threading.Lock()
        self._stop_at = stop_at
        #: True when the run hit its time budget: calls not started count as lost.
        self.cut = False
        self.latencies: list[float] = []
        self.succeeded = 0
        self.errors: list[str] = []
        workers = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]
        self.started = time.monotonic()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        self.wall = time.monotonic() - self.started

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._left <= 0:
                    return
                if time.monotonic() > self._stop_at:
                    self.cut = True
                    return
                self._left -= 1
            started = time.monotonic()
            try:
                ok = self._call()
            except grpc.RpcError as error:
                ok = False
                with self._lock:
                    self.errors.append(f"{error.code()}: {error.details()}")
            elapsed = time.monotonic() - started
            with self._lock:
                self.latencies.append(elapsed)
                self.succeeded += ok


class Recipe:
    """Clarifai's documented loop: on status 11005 sleep ``wait`` seconds, then retry."""

    def __init__(self, method: Any, request: Any, wait: float, timeout: float, stop_at: float) -> None:
        self._method, self._request, self._wait, self._timeout = method, request, wait, timeout
        self._stop_at = stop_at
        self.retries = 0
        #: True once a call gave up because the run's time budget ran out.
        self.cut = False

    def __call__(self) -> bool:
        started = time.monotonic()
        while True:
            reply = self._method(self._request, metadata=METADATA, timeout=self._timeout)
            if reply.status.code != CONN_THROTTLED:
                return bool(reply.status.code == SUCCESS)
            now = time.monotonic()
            if now + self._wait > self._stop_at:
                self.cut = True
                return False
            if now + self._wait - started > self._timeout:
                return False  # counted lost: a real script would go on looping
            time.sleep(self._wait)
            self.retries += 1


def one_run(client: str, target: str, args: argparse.Namespace, stubs: Any, budget: float) -> dict[str, Any]:
    service_pb2, service_pb2_grpc = stubs
    request = service_pb2.ListModelTypesRequest()
    channel = grpc.insecure_channel(target)
    interceptor = None
    if client.startswith("grpc-throttle"):
        capacity = args.rate if "capacity" in client else None
        interceptor = grpc_throttle.ThrottlingInterceptor(grpc_throttle.TokenBucket(rate=args.rate, capacity=capacity))
        channel = grpc.intercept_channel(channel, interceptor)
    method = service_pb2_grpc.V2Stub(channel).ListModelTypes
    grpc.channel_ready_future(channel).result(timeout=30)  # connect without spending quota
    stop_at = time.monotonic() + budget
    recipe = Recipe(method, request, args.recipe_wait, args.call_timeout, stop_at)

    def call() -> bool:
        reply = method(request, metadata=METADATA, timeout=args.call_timeout)
        return bool(reply.status.code == SUCCESS)

    with ControlClient(target) as control:
        control.reset()
        run = Run(recipe if client == "documented recipe" else call, args.calls, args.threads, stop_at)
        counters = control.counters()
    channel.close()
    sent = counters.admitted + counters.throttled
    retries = interceptor.stats().retries if interceptor is not None else recipe.retries
    return {
        "wall_s": run.wall,
        "cut_at_budget": run.cut or recipe.cut,
        "phase": run.started % 1.0,
        "sent": sent,
        "throttled": counters.throttled,
        "throttled_share": counters.throttled / sent if sent else math.nan,
        "lost": args.calls - run.succeeded,
        "retries": retries,
        "p50_s": h.percentile(run.latencies, 50),
        "p99_s": h.percentile(run.latencies, 99),
        "errors": run.errors[:3],
    }


CLIENTS = ("grpc-throttle", "grpc-throttle, capacity=Q", "bare channel", "documented recipe")
METRICS = ("wall_s", "sent", "throttled_share", "lost", "retries", "p50_s", "p99_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (100 calls, 1 repeat)")
    parser.add_argument("--rate", type=float, default=50.0, help="Q: the server's quota and the client's rate")
    parser.add_argument("--calls", type=int, default=None, help="calls per run (default 500)")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=None, help="runs per policy and client (default 3)")
    parser.add_argument("--recipe-wait", type=float, default=1.0, help="the recipe's sleep (Clarifai: 15 s)")
    parser.add_argument("--call-timeout", type=float, default=60.0, help="deadline of each call, retries included")
    parser.add_argument(
        "--budget", type=float, default=4.0, help="stop a run after this many x its paced time + 10 s; the rest is lost"
    )
    args = parser.parse_args()
    args.calls = args.calls or (100 if args.quick else 500)
    repeat = args.repeat or (1 if args.quick else 3)
    q = args.rate
    policies = [("token-bucket", q), ("token-bucket", 1.0), ("fixed-window", None)]
    print(f"# bench_goodput: Q={q:g}/s, {args.calls} calls, {args.threads} threads, median of {repeat} runs")
    print("# targets for grpc-throttle: wall <= 1.05 x ideal, <= 0.5% answered throttled, nothing lost\n")
    stubs = h.clarifai_stubs()
    results: list[dict[str, Any]] = []
    for policy, burst in policies:
        label = f"{policy}, burst {burst:g}" if burst is not None else f"{policy} ({math.floor(q)}/s)"
        best = ideal(policy, burst, q, args.calls)
        budget = args.budget * max(best, (args.calls - 1) / q) + 10
        workers = max(32, 2 * args.threads)
        with h.ServerProcess(h.serve_emulator, q, policy, burst, workers) as server:
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CLIENTS}
            for index in range(repeat):
                for client in h.rotated(CLIENTS, index):
                    run = one_run(client, server.target, args, stubs, budget)
                    phase_best = best - run["phase"] if policy == "fixed-window" else best
                    runs[client].append({**run, "ideal_phase_aware_s": phase_best})
                    print(f"  {label:<26} {client:<26} wall {run['wall_s']:6.2f} s  lost {run['lost']}", flush=True)
        for client in CLIENTS:
            summary: dict[str, Any] = {m: h.median([r[m] for r in runs[client]]) for m in METRICS}
            summary["cut_at_budget"] = sum(r["cut_at_budget"] for r in runs[client])
            results.append({"policy": label, "client": client, "ideal_s": best, **summary, "runs": runs[client]})
    print()
    rows = [
        [
            r["policy"],
            r["client"],
            f"{r['wall_s']:.2f}" + (f" (cut in {r['cut_at_budget']})" if r["cut_at_budget"] else ""),
            f"{r['ideal_s']:.2f}",
            f"{r['wall_s'] / r['ideal_s']:.3f}" if r["ideal_s"] > 0 else "—",
            f"{r['throttled_share'] * 100:.1f}% ({r['sent']:.0f} sent)",
            f"{r['lost']:.0f}",
            f"{r['p50_s']:.2f}",
            f"{r['p99_s']:.2f}",
        ]
        for r in results
    ]
    headers = ["server policy", "client", "wall s", "ideal s", "wall/ideal", "answered throttled"]
    headers += ["lost", "p50 s", "p99 s"]
    print(h.table(headers, rows))
    print()
    for r in results:
        if r["client"] == "grpc-throttle":
            verdict = {
                "wall <= 1.05 x ideal": r["wall_s"] <= 1.05 * r["ideal_s"],
                "<= 0.5% throttled": r["throttled_share"] <= 0.005,
                "nothing lost": r["lost"] == 0,
            }
            r["targets"] = verdict
            said = ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in verdict.items())
            print(f"grpc-throttle on {r['policy']}: {said}")
    config = {k: v for k, v in vars(args).items() if k != "quick"} | {"repeat": repeat}
    path = h.write_json("bench_goodput", {"config": config, "results": results})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
