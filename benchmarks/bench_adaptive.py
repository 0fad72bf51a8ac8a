"""Rate adaptation: goodput when the server allows less than the client is configured for.

The client is configured at Q requests/s (``--rate``, default 50) and makes
``--calls`` ``ListModelTypes`` calls from ``--threads`` threads as one user,
against the Clarifai emulator (in a child process) behaving three ways:

- sliding window: at most floor(Q) calls in any 1 s window. A client paced at
  exactly Q is throttled whenever jitter bunches two requests.
- token bucket at 0.7 Q: the real limit is 0.7 Q (burst 0.7 Q), below the
  configured one.
- 2 processes, one quota: two client processes, each with its own
  ``TokenBucket(rate=Q)`` and half of the threads and calls, same PAT, so
  together they offer 2 Q to one quota of Q (token bucket, burst Q).

Each runs with adaptation on (``TokenBucket(rate=Q)``, all defaults) and off
(``adaptive=None``), with and without the retry budget, plus any
``--tuned`` ``AdaptiveRate`` settings. Clients always run in child processes
(one, or two for the shared quota), started together; the server's counters
are reset before each run and read after it.

What the server allows: its rate R and burst B; the ideal wall time is
(calls - B) / R. Goodput / allowed = (successful calls / wall) / R: 1.0 means
the client got the server's full rate. Answered throttled: the server's
throttled answers over all the requests it received, retries included. Lost:
calls not ending in SUCCESS (a throttled answer handed back, an error, or a
call not started when the run's time budget ran out). Cuts / stale: the
bucket's rate decreases, and the throttled answers it ignored because their
attempt was reserved before its latest cut (they still count at the server).

Run: ``python benchmarks/bench_adaptive.py [--quick] [--rate 50] [--calls 500] [--repeat 3]
[--tuned beta=0.8,headroom=0.05 ...]``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import _harness as h

from grpc_throttle.testing import ControlClient

SUCCESS = 10000
METADATA = (("authorization", "Key bench-adaptive"),)
TARGETS = "<= 1% answered throttled, goodput >= 0.95 x allowed, nothing lost"

#: name -> (server policy, server rate / Q, server burst / Q, client processes)
SCENARIOS = {
    "sliding window at Q": ("sliding-window", 1.0, 1.0, 1),
    "token bucket at 0.7 Q": ("token-bucket", 0.7, 0.7, 1),
    "2 processes, one quota Q": ("token-bucket", 1.0, 1.0, 2),
}
#: name -> (AdaptiveRate keyword arguments, or None for adaptive=None; retry budget on)
VARIANTS: dict[str, tuple[dict[str, float] | None, bool]] = {
    "adaptive (default)": ({}, True),
    "adaptive, budget=False": ({}, False),
    "adaptive=None": (None, True),
    "adaptive=None, budget=False": (None, False),
}


def client_process(conn: Connection, target: str, settings: dict[str, Any]) -> None:
    """Child process: one ``TokenBucket(rate=Q)`` and interceptor; ``threads`` threads share ``calls`` calls."""
    import grpc

    import grpc_throttle

    service_pb2, service_pb2_grpc = h.clarifai_stubs()

    class Bucket(grpc_throttle.TokenBucket):
        """Counts the throttled answers the bucket ignores: attempts reserved before its latest cut."""

        stale = 0

        def record_throttle(self, round: int) -> None:
            if self.adaptive is not None and round < self.round:
                self.stale += 1
            super().record_throttle(round)

    adaptive = settings["adaptive"]
    bucket = Bucket(
        rate=settings["rate"], adaptive=None if adaptive is None else grpc_throttle.AdaptiveRate(**adaptive)
    )
    interceptor = grpc_throttle.ThrottlingInterceptor(bucket, budget=settings["budget"])
    raw = grpc.insecure_channel(target, options=[("grpc.enable_retries", 0)])
    grpc.channel_ready_future(raw).result(timeout=30)  # connect without spending quota
    method = service_pb2_grpc.V2Stub(grpc.intercept_channel(raw, interceptor)).ListModelTypes
    request = service_pb2.ListModelTypesRequest()
    trace: list[tuple[float, float, str]] = []
    conn.send("ready")
    start, stop_at = conn.recv()  # time.monotonic() is one clock for every process on the machine
    bucket.add_listener(lambda event: trace.append((time.monotonic() - start, event.new_rate, event.reason)))
    lock = threading.Lock()
    left, ok, cut = settings["calls"], 0, False
    latencies: list[float] = []
    errors: list[str] = []

    def work() -> None:
        nonlocal left, ok, cut
        while True:
            with lock:
                if left <= 0:
                    return
                if time.monotonic() > stop_at:
                    cut = True
                    return
                left -= 1
            began = time.monotonic()
            try:
                good = method(request, metadata=METADATA, timeout=settings["call_timeout"]).status.code == SUCCESS
            except grpc.RpcError as error:
                good = False
                errors.append(f"{error.code()}")
            with lock:
                latencies.append(time.monotonic() - began)
                ok += good

    time.sleep(max(0.0, start - time.monotonic()))
    workers = [threading.Thread(target=work) for _ in range(settings["threads"])]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    end = time.monotonic()
    stats = interceptor.stats()
    conn.send(
        {
            "end": end,
            "ok": ok,
            "cut": cut,
            "latencies": latencies,
            "errors": errors[:3],
            "throttled_seen": stats.throttled,
            "retries": stats.retries,
            "give_ups": stats.give_ups,
            "effective_rate": stats.effective_rate,
            "stale": bucket.stale,
            "rate_trace": trace,
        }
    )
    raw.close()


def one_run(scenario: str, variant: str, target: str, args: argparse.Namespace, limit: float) -> dict[str, Any]:
    processes = SCENARIOS[scenario][3]
    adaptive, budget = args.variants[variant]
    context = multiprocessing.get_context("spawn")
    shares = [args.calls // processes + (i < args.calls % processes) for i in range(processes)]
    pipes, children = [], []
    for i in range(processes):
        settings = {
            "rate": args.rate,
            "calls": shares[i],
            "threads": max(1, args.threads // processes),
            "adaptive": adaptive,
            "budget": budget,
            "call_timeout": args.call_timeout,
        }
        parent, child = context.Pipe()
        process = context.Process(target=client_process, args=(child, target, settings), daemon=True)
        process.start()
        pipes.append(parent)
        children.append(process)
    try:
        for parent in pipes:
            if not parent.poll(120) or parent.recv() != "ready":
                raise RuntimeError("a client process did not start")
        with ControlClient(target) as control:
            control.reset()
            start = time.monotonic() + 0.3
            for parent in pipes:
                parent.send((start, start + limit))
            results = [parent.recv() for parent in pipes]
            counters = control.counters()
    finally:
        for process in children:
            process.join(30)
            if process.is_alive():
                process.kill()
    sent = counters.admitted + counters.throttled
    latencies = [x for r in results for x in r["latencies"]]
    traces = [r["rate_trace"] for r in results]
    return {
        "wall_s": max(r["end"] for r in results) - start,
        "cut_at_budget": any(r["cut"] for r in results),
        "succeeded": sum(r["ok"] for r in results),
        "sent": sent,
        "throttled": counters.throttled,
        "throttled_share": counters.throttled / sent if sent else math.nan,
        "lost": args.calls - sum(r["ok"] for r in results),
        "retries": sum(r["retries"] for r in results),
        "give_ups": sum(r["give_ups"] for r in results),
        "p50_s": h.percentile(latencies, 50),
        "p99_s": h.percentile(latencies, 99),
        "final_rate": sum(r["effective_rate"] for r in results),
        "final_rates": [r["effective_rate"] for r in results],
        "decreases": sum(1 for t in traces for e in t if e[2] == "throttle"),
        "stale": sum(r["stale"] for r in results),
        "min_rate": sum(min([args.rate] + [e[1] for e in t]) for t in traces),
        "rate_traces": traces,
        "errors": [e for r in results for e in r["errors"]][:3],
    }


def tuned(spec: str) -> dict[str, float]:
    """``"beta=0.8,headroom=0.05"`` -> ``{"beta": 0.8, "headroom": 0.05}`` (checked by AdaptiveRate)."""
    from grpc_throttle import AdaptiveRate

    pairs = dict(part.split("=", 1) for part in spec.split(",") if part.strip())
    values = {k.strip(): float(v) for k, v in pairs.items()}
    AdaptiveRate(**values)
    return values


METRICS = ("wall_s", "goodput_ratio", "sent", "throttled_share", "lost", "retries", "p50_s", "p99_s")
METRICS += ("final_rate", "decreases", "min_rate", "stale")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (150 calls, 1 repeat)")
    parser.add_argument("--rate", type=float, default=50.0, help="Q: the client's configured rate")
    parser.add_argument("--calls", type=int, default=None, help="calls per run, all processes (default 500)")
    parser.add_argument("--threads", type=int, default=16, help="threads per run, split among the processes")
    parser.add_argument("--repeat", type=int, default=None, help="runs per scenario and variant (default 3)")
    parser.add_argument(
        "--tuned", action="append", default=[], help="extra variant: AdaptiveRate settings, e.g. beta=0.8,headroom=0.05"
    )
    parser.add_argument("--only", default="", help="comma-separated scenario numbers to run (1-3); default all")
    parser.add_argument("--variants", default="", help="comma-separated numbers of the built-in variants (1-4) to run")
    parser.add_argument("--call-timeout", type=float, default=60.0, help="deadline of each call, retries included")
    parser.add_argument("--budget", type=float, default=4.0, help="stop a run after this many x ideal + 10 s")
    args = parser.parse_args()
    args.calls = args.calls or (150 if args.quick else 500)
    repeat = args.repeat or (1 if args.quick else 3)
    picked = [v for i, v in enumerate(VARIANTS, 1) if not args.variants or str(i) in args.variants.split(",")]
    args.variants = {v: VARIANTS[v] for v in picked}
    for spec in args.tuned:
        args.variants[f"AdaptiveRate({spec.replace(',', ', ')})"] = (tuned(spec), True)
    chosen = [n for i, n in enumerate(SCENARIOS, 1) if not args.only or str(i) in args.only.split(",")]
    q = args.rate
    print(f"# bench_adaptive: client at Q={q:g}/s, {args.calls} calls, {args.threads} threads, median of {repeat}")
    print(f"# targets: {TARGETS}\n")
    h.clarifai_stubs()  # fail early if clarifai-grpc is missing
    servers: dict[str, h.ServerProcess] = {}
    allowed: dict[str, tuple[float, float]] = {}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for name in chosen:
            policy, rate_factor, burst_factor, _ = SCENARIOS[name]
            rate = q * rate_factor
            burst = math.floor(rate) if policy == "sliding-window" else q * burst_factor
            allowed[name] = (math.floor(rate) if policy == "sliding-window" else rate, burst)
            server_burst = None if policy == "sliding-window" else burst
            servers[name] = h.ServerProcess(h.serve_emulator, rate, policy, server_burst, max(32, 2 * args.threads))
            servers[name].__enter__()
        pairs = [(s, v) for s in chosen for v in args.variants]
        for index in range(repeat):
            for scenario, variant in h.rotated(pairs, index * (len(args.variants) + 1)):
                rate, burst = allowed[scenario]
                limit = args.budget * args.calls / rate + 10
                run = one_run(scenario, variant, servers[scenario].target, args, limit)
                run["goodput_ratio"] = run["succeeded"] / run["wall_s"] / rate
                runs.setdefault((scenario, variant), []).append(run)
                print(
                    f"  {scenario:<25} {variant:<40} wall {run['wall_s']:6.2f} s  "
                    f"throttled {run['throttled_share'] * 100:5.1f}%  lost {run['lost']:3d}  "
                    f"rate {run['final_rate']:5.1f}  decreases {run['decreases']}",
                    flush=True,
                )
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)
    results: list[dict[str, Any]] = []
    for scenario in chosen:
        rate, burst = allowed[scenario]
        for variant in args.variants:
            done = runs[(scenario, variant)]
            summary: dict[str, Any] = {m: h.median([r[m] for r in done]) for m in METRICS}
            summary["cut_at_budget"] = sum(r["cut_at_budget"] for r in done)
            targets = {
                "<= 1% throttled": summary["throttled_share"] <= 0.01,
                "goodput >= 0.95 x allowed": summary["goodput_ratio"] >= 0.95,
                "nothing lost": summary["lost"] == 0,
            }
            ideal = max(args.calls - burst, 0) / rate
            entry = {"scenario": scenario, "variant": variant, "server_rate": rate, "server_burst": burst}
            results.append({**entry, "ideal_s": ideal, **summary, "targets": targets, "runs": done})
    print()
    rows = [
        [
            r["scenario"],
            r["variant"],
            f"{r['wall_s']:.2f}" + (f" (cut in {r['cut_at_budget']})" if r["cut_at_budget"] else ""),
            f"{r['server_rate']:g}/s, B {r['server_burst']:g}: {r['ideal_s']:.2f} s",
            f"{r['goodput_ratio']:.3f}",
            f"{r['throttled_share'] * 100:.1f}% ({r['sent']:.0f} sent)",
            f"{r['lost']:.0f}",
            f"{r['p50_s']:.2f}",
            f"{r['p99_s']:.2f}",
            f"{r['final_rate']:.1f} (min {r['min_rate']:.1f})",
            f"{r['decreases']:.0f} / {r['stale']:.0f}",
            "".join("✓" if v else "✗" for v in r["targets"].values()),
        ]
        for r in results
    ]
    headers = ["server", "client", "wall s", "server allows: rate, burst: ideal", "goodput/allowed"]
    headers += ["answered throttled", "lost", "p50 s", "p99 s", "final effective rate", "cuts / stale", "targets"]
    print(h.table(headers, rows))
    print(f"\ntargets (✓/✗ in order): {TARGETS}")
    config = {k: v for k, v in vars(args).items() if k not in ("quick", "variants")}
    config |= {"repeat": repeat, "variants": args.variants}
    path = h.write_json("bench_adaptive", {"config": config, "results": results})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
