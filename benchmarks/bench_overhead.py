"""What grpc-throttle costs per call when it never has to wait: calls through it vs a bare channel.

The bucket's rate is far above the load (``TokenBucket(rate=1e9,
capacity=1e9)``), so every call takes a token at once: this measures the
interceptor's bookkeeping. Calls go to the echo servers of ``tests/scripted.py``
(``"<id>:ok"``: answer at once), by default in a separate process so that
server threads do not share the client's GIL (``--server inprocess`` or
``both`` to compare).

Sync variants share one underlying channel: bare; ``grpc.intercept_channel``
with a pass-through interceptor (grpc's own plumbing); ``intercept_channel``
with ours; ``ThrottledChannel`` with ours. Aio variants (one channel each):
bare; ``interceptors=[pass-through]``; ``interceptors=[ours]``;
``grpc_throttle.aio.ThrottledChannel`` with ours (the aio fast path). Each load shape
(sequential from one thread or task; concurrent from 8 threads or 64 tasks) runs
many short rounds, every round timing every variant in a rotated order. The
table gives the median microseconds per call (wall time / calls) and the
overhead: the median over rounds of (variant / bare in the same round) - 1;
then the same for the client process's CPU time per call, which other load on
the machine disturbs less, and the CPU µs each variant adds per call (median
over rounds of variant - bare in the same round). Last, the client-side cost alone: µs added per call
over a fake channel that answers at once (echo answers, and Clarifai answers
under the default throttle policy).

Run: ``python benchmarks/bench_overhead.py [--quick] [--server process|inprocess|both]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
import timeit
from collections.abc import Callable
from concurrent import futures
from typing import Any

import _harness as h
import grpc
import grpc.aio

import grpc_throttle
import grpc_throttle.aio
from grpc_throttle.testing import echo_pb2, echo_pb2_grpc
from tests.scripted import ECHO_POLICY  # the echo service's "slow down" is outcome.state (root via _harness)

REQUEST = echo_pb2.EchoRequest(text="1:ok")
SYNC = ("bare channel", "intercept_channel(pass-through)", "intercept_channel(ours)", "ThrottledChannel(ours)")
AIO = ("bare aio channel", "interceptors=[pass-through]", "interceptors=[ours]", "aio.ThrottledChannel(ours)")


class PassThrough(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Does nothing: what grpc's interceptor plumbing costs by itself."""

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(client_call_details, request)


class AioPassThrough(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Does nothing, for ``grpc.aio``."""

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(client_call_details, request)


def _ours(policy: grpc_throttle.ThrottlePolicy = ECHO_POLICY) -> grpc_throttle.ThrottlingInterceptor:
    return grpc_throttle.ThrottlingInterceptor(grpc_throttle.TokenBucket(rate=1e9, capacity=1e9), throttle=policy)


Sample = tuple[float, float]  # (wall µs, process CPU µs) per call


def _start() -> Sample:
    return time.perf_counter(), time.process_time()


def _per_call(started: Sample, n: int) -> Sample:
    return (time.perf_counter() - started[0]) / n * 1e6, (time.process_time() - started[1]) / n * 1e6


def _rounds(variants: dict[str, Callable[[], Sample]], rounds: int) -> dict[str, list[Sample]]:
    """Times every variant once per round, in a rotated order."""
    samples: dict[str, list[Sample]] = {name: [] for name in variants}
    for round_no in range(rounds):
        for name, measure in h.rotated(list(variants.items()), round_no):
            samples[name].append(measure())
    return samples


def bench_sync(target: str, rounds: int, calls: int, threads: int) -> dict[str, Any]:
    base = grpc.insecure_channel(target)
    ours_ic, ours_tc = _ours(), _ours()
    channels = [
        base,
        grpc.intercept_channel(base, PassThrough()),
        grpc.intercept_channel(base, ours_ic),
        grpc_throttle.ThrottledChannel(base, ours_tc),
    ]
    unary = {name: echo_pb2_grpc.EchoStub(ch).Unary for name, ch in zip(SYNC, channels, strict=True)}
    pool = futures.ThreadPoolExecutor(threads)

    def loop(call: Callable[..., Any], n: int) -> None:
        for _ in range(n):
            call(REQUEST)

    def sequential(call: Callable[..., Any]) -> Callable[[], Sample]:
        def measure() -> Sample:
            started = _start()
            loop(call, calls)
            return _per_call(started, calls)

        return measure

    per_thread = max(1, calls * 4 // threads)

    def concurrent(call: Callable[..., Any]) -> Callable[[], Sample]:
        def measure() -> Sample:
            started = _start()
            for job in [pool.submit(loop, call, per_thread) for _ in range(threads)]:
                job.result()
            return _per_call(started, per_thread * threads)

        return measure

    for call in unary.values():  # connect and warm up
        loop(call, 200)
    result = {
        "sync, sequential": _rounds({n: sequential(c) for n, c in unary.items()}, rounds),
        f"sync, {threads} threads": _rounds({n: concurrent(c) for n, c in unary.items()}, rounds),
    }
    pool.shutdown()
    base.close()
    _check_stats(ours_ic.stats(), "intercept_channel(ours)")
    _check_stats(ours_tc.stats(), "ThrottledChannel(ours)")
    return result


async def bench_aio(target: str, rounds: int, calls: int, tasks: int) -> dict[str, Any]:
    bucket = grpc_throttle.TokenBucket(rate=1e9, capacity=1e9)
    ours = grpc_throttle.aio.ThrottlingInterceptor(bucket, throttle=ECHO_POLICY)
    ours_fast = grpc_throttle.aio.ThrottlingInterceptor(bucket, throttle=ECHO_POLICY)
    channels = [
        grpc.aio.insecure_channel(target),
        grpc.aio.insecure_channel(target, interceptors=[AioPassThrough()]),
        grpc.aio.insecure_channel(target, interceptors=[ours]),
        grpc_throttle.aio.ThrottledChannel(grpc.aio.insecure_channel(target), ours_fast),
    ]
    unary = {name: echo_pb2_grpc.EchoStub(ch).Unary for name, ch in zip(AIO, channels, strict=True)}

    async def loop(call: Callable[..., Any], n: int) -> None:
        for _ in range(n):
            await call(REQUEST)

    per_task = max(1, calls * 4 // tasks)

    async def sequential(call: Callable[..., Any]) -> Sample:
        started = _start()
        await loop(call, calls)
        return _per_call(started, calls)

    async def concurrent(call: Callable[..., Any]) -> Sample:
        started = _start()
        await asyncio.gather(*(loop(call, per_task) for _ in range(tasks)))
        return _per_call(started, per_task * tasks)

    for call in unary.values():
        await loop(call, 200)
    result: dict[str, Any] = {}
    for label, shape in (("aio, sequential", sequential), (f"aio, {tasks} tasks", concurrent)):
        samples: dict[str, list[Sample]] = {name: [] for name in AIO}
        for round_no in range(rounds):
            for name, call in h.rotated(list(unary.items()), round_no):
                samples[name].append(await shape(call))
        result[label] = samples
    for channel in channels:
        await channel.close()
    _check_stats(ours.stats(), "interceptors=[ours]")
    _check_stats(ours_fast.stats(), "aio.ThrottledChannel(ours)")
    return result


def _check_stats(stats: grpc_throttle.Stats, name: str) -> None:
    if stats.attempts != stats.calls or stats.throttled or stats.token_wait_seconds:
        raise RuntimeError(f"{name}: the interceptor did more than pass calls through: {stats}")


def isolated(rounds: int) -> list[list[str]]:
    """Client-side cost alone: the same stubs over a channel that answers at once (no I/O)."""
    service_pb2, service_pb2_grpc = h.clarifai_stubs()
    from clarifai_grpc.grpc.api.status import status_pb2

    clarifai = service_pb2.MultiModelTypeResponse(status=status_pb2.Status(code=10000))
    list_request = service_pb2.ListModelTypesRequest()
    default = grpc_throttle.ThrottlePolicy()
    setups = [  # (answer, policy label, stub class, method, request, throttle policy)
        ("echo", "ECHO_POLICY", echo_pb2_grpc.EchoStub, "Unary", REQUEST, ECHO_POLICY),
        ("echo", "default (no status field)", echo_pb2_grpc.EchoStub, "Unary", REQUEST, default),
        ("Clarifai", "default", service_pb2_grpc.V2Stub, "ListModelTypes", list_request, default),
    ]
    rows = []
    for answer, label, stub, method, request, policy in setups:
        base = h.instant_channel(echo_pb2.EchoResponse(text="1:ok") if answer == "echo" else clarifai)
        channels = [
            base,
            grpc.intercept_channel(base, PassThrough()),
            grpc.intercept_channel(base, _ours(policy)),
            grpc_throttle.ThrottledChannel(base, _ours(policy)),
        ]
        calls = {name: getattr(stub(ch), method) for name, ch in zip(SYNC, channels, strict=True)}
        timers = {name: timeit.Timer(functools.partial(call, request)) for name, call in calls.items()}
        samples: dict[str, list[float]] = {name: [] for name in SYNC}
        for round_no in range(rounds):
            for name, timer in h.rotated(list(timers.items()), round_no):
                samples[name].append(timer.timeit(2000) / 2000 * 1e6)
        bare = h.median(samples[SYNC[0]])
        for name in SYNC[1:]:
            rows.append([f"{answer} answer, {label}", name, f"{h.median(samples[name]) - bare:.2f}"])
    return rows


def isolated_aio(rounds: int) -> list[list[str]]:
    """Client-side cost alone on asyncio: aio.ThrottledChannel over an aio channel whose calls are done at once.

    grpc.aio's own interceptors need a real channel, so only the fast path is timed here.
    """
    response = echo_pb2.EchoResponse(text="1:ok")

    async def run() -> list[list[str]]:
        base = h.instant_aio_channel(response)
        ours = grpc_throttle.aio.ThrottlingInterceptor(
            grpc_throttle.TokenBucket(rate=1e9, capacity=1e9), throttle=ECHO_POLICY
        )
        calls = {
            "bare": echo_pb2_grpc.EchoStub(base).Unary,
            "aio.ThrottledChannel(ours)": echo_pb2_grpc.EchoStub(grpc_throttle.aio.ThrottledChannel(base, ours)).Unary,
        }
        samples: dict[str, list[float]] = {name: [] for name in calls}
        n = 2000
        for round_no in range(rounds):
            for name, call in h.rotated(list(calls.items()), round_no):
                started = time.perf_counter()
                for _ in range(n):
                    await call(REQUEST)
                samples[name].append((time.perf_counter() - started) / n * 1e6)
        _check_stats(ours.stats(), "aio.ThrottledChannel(ours), instant channel")
        added = h.median(samples["aio.ThrottledChannel(ours)"]) - h.median(samples["bare"])
        return [["echo answer, ECHO_POLICY (asyncio)", "aio.ThrottledChannel(ours)", f"{added:.2f}"]]

    return asyncio.run(run())


def summarise(samples: dict[str, dict[str, list[Sample]]]) -> list[dict[str, Any]]:
    rows = []
    for shape, variants in samples.items():
        bare = next(iter(variants.values()))
        for name, values in variants.items():
            row: dict[str, Any] = {"shape": shape, "variant": name}
            for i, kind in enumerate(("wall", "cpu")):
                ratios = [v[i] / b[i] for v, b in zip(values, bare, strict=True)]
                row[f"{kind}_us"] = h.median([v[i] for v in values])
                row[f"{kind}_overhead"] = h.median(ratios) - 1
                row[f"{kind}_ratio_p25_p75"] = (h.percentile(ratios, 25), h.percentile(ratios, 75))
            row["cpu_added_us"] = h.median([v[1] - b[1] for v, b in zip(values, bare, strict=True)])
            rows.append(row)
    return rows


def print_rows(title: str, rows: list[dict[str, Any]], cpu: str) -> None:
    print(f"\n## {title}\n")
    headers = [
        "load",
        "variant",
        "µs/call",
        "calls/s",
        "overhead",
        "ratio p25-p75",
        cpu,
        "CPU overhead",
        "CPU µs added",
    ]
    cells = []
    for r in rows:
        bare = r["variant"].startswith("bare")
        p25, p75 = r["wall_ratio_p25_p75"]
        cells.append(
            [
                r["shape"],
                r["variant"],
                f"{r['wall_us']:.1f}",
                f"{1e6 / r['wall_us']:,.0f}",
                "—" if bare else f"{r['wall_overhead'] * 100:+.1f}%",
                "—" if bare else f"{p25:.3f}-{p75:.3f}",
                f"{r['cpu_us']:.1f}",
                "—" if bare else f"{r['cpu_overhead'] * 100:+.1f}%",
                "—" if bare else f"{r['cpu_added_us']:+.1f}",
            ]
        )
    print(h.table(headers, cells), flush=True)


def run_mode(mode: str, rounds: int, calls: int, threads: int, tasks: int) -> dict[str, Any]:
    from tests.scripted import AioEchoServer, EchoServer

    samples: dict[str, Any] = {}
    if mode == "process":
        with h.ServerProcess(h.serve_echo) as server:
            samples.update(bench_sync(server.target, rounds, calls, threads))
        with h.ServerProcess(h.serve_aio_echo) as server:
            samples.update(asyncio.run(bench_aio(server.target, rounds, calls, tasks)))
    else:
        with EchoServer() as sync_server:
            samples.update(bench_sync(sync_server.target, rounds, calls, threads))

        async def aio_inprocess() -> dict[str, Any]:
            async with AioEchoServer() as aio_server:
                return await bench_aio(aio_server.target, rounds, calls, tasks)

        samples.update(asyncio.run(aio_inprocess()))
    rows = summarise(samples)
    where = "in a separate process" if mode == "process" else "in the client's process"
    cpu = "client CPU µs/call" if mode == "process" else "process CPU µs/call (+ server)"
    title = f"server {where} ({rounds} rounds, {calls} sequential / {calls * 4} concurrent calls each; medians)"
    print_rows(title, rows, cpu)
    return {"rows": rows, "samples_us": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--server", choices=("process", "inprocess", "both"), default="process")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per load shape (default 40, quick 4)")
    parser.add_argument("--calls", type=int, default=None, help="sequential calls per round (default 256, quick 64)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=64)
    args = parser.parse_args()
    rounds = args.rounds or (4 if args.quick else 40)
    calls = args.calls or (64 if args.quick else 256)
    print("# bench_overhead: rate far above the load; target: overhead <= 3%")
    modes = ("process", "inprocess") if args.server == "both" else (args.server,)
    results = {mode: run_mode(mode, rounds, calls, args.threads, args.tasks) for mode in modes}
    alone = isolated(rounds) + isolated_aio(rounds)
    print("\n## client-side cost alone: µs added per call over a bare channel that answers at once\n")
    print(h.table(["answer, throttle policy", "variant", "µs added per call (median)"], alone))
    config = {"rounds": rounds, "calls": calls, "threads": args.threads, "tasks": args.tasks}
    path = h.write_json("bench_overhead", {"config": config, "results": results, "isolated_us_added": alone})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
