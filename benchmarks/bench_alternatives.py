"""Goodput against the alternatives: what else a Clarifai user can do about the 15 req/s quota.

The Clarifai emulator runs in a child process on two ports: one answers
over-quota calls as Clarifai does (gRPC OK, body ``status.code`` 11005), the
other with RESOURCE_EXHAUSTED (``throttle_with="grpc"``) for gRPC's own
retries. Its clock records every request's arrival (for the plot). Each client
makes ``--calls`` ``ListModelTypes`` calls from ``--threads`` threads (tasks
for aio) as a user of its own; per quota policy every client runs once.

Clients, with their defaults unless said: a bare channel; the documented recipe
(on 11005 sleep, retry until success) at Clarifai's 15 s and at 1 s; the
clarifai SDK's ``create_stub(ClarifaiAuthHelper(..., base="http://<emulator>"))``
(``RetryStub``: 10 attempts, fixed 5 s sleep; a subclass of the helper only
keeps the channel so the run can close it at its budget); tenacity + aiolimiter
on a ``grpc.aio`` stub (``AsyncLimiter(Q, 1)`` around each attempt; ``@retry`` on
11005 with our default schedule: 5 attempts, full-jitter exponential 1 s..15 s,
the last answer handed back); gRPC's service-config ``retryPolicy`` (the same
schedule, on RESOURCE_EXHAUSTED) against both servers; grpc-throttle's
``client.clarifai_insecure_channel(target, pat, rate=Q)``.

Each run has a budget of ``--budget`` x ideal + ``--budget-extra`` s, which is
also every call's deadline. When it runs out, calls in flight are aborted (the
channel is closed) and count as lost with those never started ("cut").
Latency percentiles cover the calls that finished.

Run: ``python benchmarks/bench_alternatives.py [--quick] [--rate 15] [--calls 500]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import multiprocessing
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import _harness as h
import grpc
from bench_goodput import CONN_THROTTLED as THROTTLED
from bench_goodput import SUCCESS, ideal

from grpc_throttle import client as throttle_client
from grpc_throttle.testing import ClarifaiEmulator, ControlClient

SERVICE_CONFIG = json.dumps({"methodConfig": [{"name": [{"service": "clarifai.api.V2"}], "retryPolicy": {
    "maxAttempts": 5, "initialBackoff": "1s", "maxBackoff": "15s", "backoffMultiplier": 2,
    "retryableStatusCodes": ["RESOURCE_EXHAUSTED"]}}]})  # fmt: skip
GRPC_RETRIES = [("grpc.service_config", SERVICE_CONFIG), ("grpc.enable_retries", 1)]
STUBS: Any = None  # (service_pb2, service_pb2_grpc), set in main()
REQUEST: Any = None


def serve_recorded(conn: Connection, times: Connection, rate: float, policy: str, burst: float | None) -> None:
    """Child process: the emulator with body and with gRPC-status answers; ``times`` reads arrivals."""
    arrivals: list[float] = []

    def clock() -> float:  # the emulator reads its clock once per request
        now = time.monotonic()
        arrivals.append(now)
        return now

    options: dict[str, Any] = {"rate": rate, "policy": policy, "burst": burst, "max_workers": 48, "clock": clock}
    with ClarifaiEmulator(**options) as body, ClarifaiEmulator(throttle_with="grpc", **options) as status:
        conn.send({"body": body.target, "grpc": status.target})
        while not conn.poll(0.05):
            if times.poll():
                since = times.recv()
                admitted = body.admission_times() + status.admission_times()
                times.send(([t for t in arrivals if t >= since], [t for t in admitted if t >= since]))
                arrivals.clear()


class Batch:
    """``calls`` calls shared by workers, within a time budget; counts what happened."""

    def __init__(self, calls: int, budget: float) -> None:
        self.left, self.budget = calls, budget
        self.lock = threading.Lock()
        #: Set when the budget ran out: sleeps end, calls in flight are aborted.
        self.cut = threading.Event()
        self.latencies: list[float] = []
        self.succeeded = 0
        #: The first few errors, for the JSON.
        self.errors: list[str] = []
        self.started = self.stop_at = math.inf
        self.wall = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self.stop_at = self.started + self.budget

    def remaining(self) -> float:
        """Each call's deadline: the end of the budget."""
        return max(0.001, self.stop_at - time.monotonic())

    def sleep(self, seconds: float) -> bool:
        """Sleep unless the budget ends first; False if it did."""
        self.cut.wait(min(seconds, max(0.0, self.stop_at - time.monotonic())))
        if time.monotonic() >= self.stop_at:
            self.cut.set()
        return not self.cut.is_set()

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0:
                return False
            if self.cut.is_set() or time.monotonic() >= self.stop_at:
                self.cut.set()
                return False
            self.left -= 1
            return True

    def record(self, started: float, ok: bool, error: BaseException | None) -> None:
        with self.lock:
            self.succeeded += ok
            if not ok and self.cut.is_set():
                return  # aborted by the budget: lost, not a latency
            self.latencies.append(time.monotonic() - started)
            if error is not None and len(self.errors) < 3:
                self.errors.append(repr(error)[:300])

    def run_threads(self, call: Callable[[], bool], close: Callable[[], None], threads: int) -> None:
        def work() -> None:
            while self.take():
                started, error, ok = time.monotonic(), None, False
                try:
                    ok = call()
                except Exception as exc:  # an RpcError, or ValueError from a channel closed at the budget
                    error = exc
                self.record(started, ok, error)

        workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
        self.start()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(max(0.0, self.stop_at - time.monotonic()))
        self.wall = min(time.monotonic(), self.stop_at) - self.started
        if any(worker.is_alive() for worker in workers):
            self.cut.set()
            close()  # aborts calls in flight; the SDK's sleeping threads fail on their next attempt
            for worker in workers:
                worker.join(30)
        else:
            close()

    async def run_tasks(self, call: Callable[[], Any], tasks: int) -> None:
        async def work() -> None:
            while self.take():
                started, error, ok = time.monotonic(), None, False
                try:
                    ok = await call()
                except grpc.RpcError as exc:
                    error = exc
                self.record(started, ok, error)

        self.start()
        _, pending = await asyncio.wait([asyncio.create_task(work()) for _ in range(tasks)], timeout=self.budget)
        self.wall = min(time.monotonic(), self.stop_at) - self.started
        if pending:
            self.cut.set()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _ok(reply: Any) -> bool:
    return bool(reply.status.code == SUCCESS)


def plain(wait: float | None = None, options: list[tuple[str, Any]] | None = None) -> Callable[..., Any]:
    """A channel of grpc's own; with ``wait``, the recipe: on 11005 sleep ``wait`` s, retry until success."""

    def build(target: str, pat: str, args: argparse.Namespace, batch: Batch) -> Any:
        channel = grpc.insecure_channel(target, options=options)
        method = STUBS[1].V2Stub(channel).ListModelTypes
        metadata = (("authorization", f"Key {pat}"),)

        def call() -> bool:
            while (reply := method(REQUEST, metadata=metadata, timeout=batch.remaining())).status.code == THROTTLED:
                if wait is None or not batch.sleep(wait):
                    return False
            return _ok(reply)

        return channel, call

    return build


def clarifai_sdk(target: str, pat: str, args: argparse.Namespace, batch: Batch) -> Any:
    from clarifai.client.auth.helper import ClarifaiAuthHelper
    from clarifai.client.auth.stub import create_stub

    class Helper(ClarifaiAuthHelper):  # type: ignore[misc]
        def get_stub(self) -> Any:  # the one change: keep the channel, to close it at the budget
            stub, self.channel = self.get_stub_and_channel()
            return stub

    helper = Helper(user_id="bench", app_id="bench", pat=pat, base=f"http://{target}")
    stub = create_stub(helper)  # RetryStub: max_attempts=10, backoff_time=5
    return helper.channel, lambda: _ok(stub.ListModelTypes(REQUEST, timeout=batch.remaining()))


def grpc_throttle(target: str, pat: str, args: argparse.Namespace, batch: Batch) -> Any:
    channel = throttle_client.clarifai_insecure_channel(target, pat, rate=args.rate)
    method = STUBS[1].V2Stub(channel).ListModelTypes
    return channel, lambda: _ok(method(REQUEST, timeout=batch.remaining()))


async def tenacity_aiolimiter(target: str, pat: str, args: argparse.Namespace, batch: Batch) -> None:
    from aiolimiter import AsyncLimiter
    from tenacity import retry, retry_if_result, stop_after_attempt, wait_random_exponential

    channel = grpc.aio.insecure_channel(target)
    method = STUBS[1].V2Stub(channel).ListModelTypes
    metadata = (("authorization", f"Key {pat}"),)
    limiter = AsyncLimiter(args.rate, 1.0)

    throttled = retry_if_result(lambda reply: reply.status.code == THROTTLED)
    last_answer = lambda state: state.outcome.result()  # noqa: E731  (hand back the last answer)

    @retry(
        retry=throttled,
        wait=wait_random_exponential(1, 15),
        stop=stop_after_attempt(5),
        retry_error_callback=last_answer,
    )
    async def send() -> Any:
        async with limiter:
            return await method(REQUEST, metadata=metadata, timeout=batch.remaining())

    async def call() -> bool:
        return _ok(await send())

    await asyncio.wait_for(channel.channel_ready(), 30)
    try:
        await batch.run_tasks(call, args.threads)
    finally:
        await channel.close()


#: (name, builder, server answering throttled calls with "body" or "grpc").
CLIENTS: list[tuple[str, Callable[..., Any], str]] = [
    ("bare channel", plain(), "body"),
    ("documented recipe, 15 s sleep", plain(15.0), "body"),
    ("recipe, 1 s sleep", plain(1.0), "body"),
    ("clarifai SDK RetryStub (defaults)", clarifai_sdk, "body"),
    ("tenacity + aiolimiter (aio)", tenacity_aiolimiter, "body"),
    ("gRPC retryPolicy, RESOURCE_EXHAUSTED server", plain(options=GRPC_RETRIES), "grpc"),
    ("gRPC retryPolicy, body-status server", plain(options=GRPC_RETRIES), "body"),
    ("grpc-throttle", grpc_throttle, "body"),
]


def one_run(client: tuple[str, Callable[..., Any], str], targets: dict[str, str], times: Connection, **kw: Any) -> Any:
    name, build, mode = client
    args, budget, pat, rate = kw["args"], kw["budget"], kw["pat"], kw["quota"]
    batch = Batch(args.calls, budget)
    with ControlClient(targets[mode]) as control:
        control.reset()
        if asyncio.iscoroutinefunction(build):
            asyncio.run(build(targets[mode], pat, args, batch))
        else:
            channel, call = build(targets[mode], pat, args, batch)
            grpc.channel_ready_future(channel).result(timeout=30)  # connect without spending quota
            batch.run_threads(call, channel.close, args.threads)
        counters = control.counters()
    times.send(batch.started)
    arrivals, admitted = times.recv()
    bins = max(1, math.ceil(batch.wall))
    sent = counters.admitted + counters.throttled
    return {
        "client": name,
        "server_answers": mode,
        "wall_s": batch.wall,
        "cut_at_budget": batch.cut.is_set(),
        "succeeded": batch.succeeded,
        "lost": args.calls - batch.succeeded,
        "sent": sent,
        "throttled": counters.throttled,
        "throttled_share": counters.throttled / sent if sent else math.nan,
        # Over the ideal time at least: finishing early by dropping calls earns nothing.
        "goodput_per_quota": batch.succeeded / max(batch.wall, kw["ideal"]) / rate,
        "p50_s": h.percentile(batch.latencies, 50),
        "p99_s": h.percentile(batch.latencies, 99),
        "sent_per_s": per_second(arrivals, batch.started, bins),
        "admitted_per_s": per_second(admitted, batch.started, bins),
        "errors": batch.errors,
    }


def per_second(times: list[float], start: float, bins: int) -> list[int]:
    counts = collections.Counter(min(max(int(t - start), 0), bins - 1) for t in times)
    return [counts[i] for i in range(bins)]


def plot(path: str, results: list[dict[str, Any]], policy: str, rate: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = [r for r in results if r["policy"] == policy]
    figure = Figure(figsize=(13, 2.2 * math.ceil(len(runs) / 2) + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(math.ceil(len(runs) / 2), 2, sharex=True, sharey=True).flatten()
    for ax, run in zip(axes, runs, strict=False):
        edges = list(range(len(run["sent_per_s"]) + 1))
        ax.stairs(run["sent_per_s"], edges, label="requests sent", color="tab:red", linewidth=1)
        ax.stairs(run["admitted_per_s"], edges, label="admitted", color="tab:blue", linewidth=1.6)
        ax.axhline(rate, color="black", linestyle="--", linewidth=1, label=f"quota {rate:g}/s")
        peak = max(run["sent_per_s"])
        cut = (" (cut)" if run["cut_at_budget"] else "") + (
            f", sent {peak}/s at peak (clipped)" if peak > 4 * rate else ""
        )
        ax.set_title(f"{run['client']}: {run['succeeded']} ok in {run['wall_s']:.0f} s{cut}", fontsize=9, loc="left")
        ax.set_ylim(0, 4 * rate)
    axes[0].legend(loc="upper right", fontsize=8)
    for ax in axes[-2:]:
        ax.set_xlabel("seconds since the run started")
    figure.suptitle(f"Requests per second at the server, {policy}, quota {rate:g}/s", fontsize=11)
    figure.savefig(path, dpi=100)


def main() -> None:
    global STUBS, REQUEST
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (60 calls, budget 2 x ideal + 10 s)")
    parser.add_argument("--rate", type=float, default=15.0, help="Q: the server's quota (Clarifai: 15/s)")
    parser.add_argument("--calls", type=int, default=None, help="calls per run (default 500)")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--budget", type=float, default=None, help="stop a run after this x ideal (default 4) ...")
    parser.add_argument("--budget-extra", type=float, default=None, help="... + this many seconds (default 30)")
    parser.add_argument("--plot-policy", default="token-bucket", help="the policy drawn in alternatives.png")
    args = parser.parse_args()
    args.calls = args.calls or (60 if args.quick else 500)
    args.budget = args.budget or (2.0 if args.quick else 4.0)
    args.budget_extra = args.budget_extra if args.budget_extra is not None else (10.0 if args.quick else 30.0)
    q = args.rate
    STUBS = h.clarifai_stubs()
    REQUEST = STUBS[0].ListModelTypesRequest()
    print(f"# bench_alternatives: Q={q:g}/s, {args.calls} calls, {args.threads} threads, one run per client\n")
    results: list[dict[str, Any]] = []
    for policy, burst in (("token-bucket", q), ("fixed-window", None), ("sliding-window", None)):
        quota = q if policy == "token-bucket" else math.floor(q)
        best = ideal(policy, burst, q, args.calls)
        budget = args.budget * best + args.budget_extra
        times, child = multiprocessing.get_context("spawn").Pipe()
        with h.ServerProcess(serve_recorded, child, q, policy, burst) as server:
            for index, client in enumerate(CLIENTS):
                pat = f"bench-{policy}-{index}"  # a fresh user: fresh server quota, fresh client bucket
                run = one_run(client, server.target, times, args=args, budget=budget, pat=pat, quota=quota, ideal=best)
                results.append({"policy": policy, "burst": burst, "ideal_s": best, "budget_s": budget, **run})
                cut = " (cut)" if run["cut_at_budget"] else ""
                print(
                    f"  {policy:<15} {run['client']:<44} wall {run['wall_s']:6.1f} s{cut:<6} lost {run['lost']}",
                    flush=True,
                )
    print()
    print(h.table(HEADERS, [row(r) for r in results]))
    path = h.write_json("bench_alternatives", {"config": vars(args), "results": results})
    plot(str(h.RESULTS / "alternatives.png"), results, args.plot_policy, q)
    print(f"\nresults: {path}, plot: {h.RESULTS / 'alternatives.png'}")


HEADERS = ["server policy", "client", "wall s", "wall/ideal", "goodput/quota", "throttled (sent)"]
HEADERS += ["p50 s", "p99 s", "lost"]


def row(r: dict[str, Any]) -> list[str]:
    """One table row; shared with report.py."""
    cut = " cut" if r["cut_at_budget"] else ""
    return [
        r["policy"] + (f", burst {r['burst']:g}" if r["burst"] else ""),
        r["client"],
        f"{r['wall_s']:.1f}{cut}",
        f"{r['wall_s'] / r['ideal_s']:.2f}",
        f"{r['goodput_per_quota']:.2f}",
        f"{r['throttled_share'] * 100:.1f}% ({r['sent']})",
        "—" if math.isnan(r["p50_s"]) else f"{r['p50_s']:.2f}",
        "—" if math.isnan(r["p99_s"]) else f"{r['p99_s']:.2f}",
        f"{r['lost']}" + (" (cut)" if r["cut_at_budget"] and r["lost"] else ""),
    ]


if __name__ == "__main__":
    main()
