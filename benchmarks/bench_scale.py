"""Many waiters on one TokenBucket: 10,000 asyncio tasks, and 64 threads.

Part 1, asyncio. ``--tasks`` (10,000) tasks wait on one ``TokenBucket(rate=R)``
(``--rate``, 2000/s) in one event loop, four ways:

- ``asyncio.sleep`` only: each task sleeps until its slot of the same
  schedule with no bucket at all (the floor: what a task and a timer cost);
- ``reserve() + sleep``: ``r = bucket.reserve(); await asyncio.sleep(r.delay)``,
  the mechanism the aio interceptor uses;
- ``reserve() + call_at(ready_at)``: the same, with a loop timer at the absolute
  ``r.ready_at`` instead of a sleep of ``r.delay``;
- aio interceptor: ``grpc_throttle.aio.ThrottlingInterceptor`` itself, its
  ``intercept_unary_unary`` called with a continuation that answers at once
  (no gRPC I/O, so only the waiting is measured).

The bucket's schedule is first filled ``--lead`` (2 s) ahead, so every task
waits at least that long. Measured: the CPU time to start the tasks (each
reserves), the process CPU time while all of them wait and none is due yet
(without polling: about zero, whatever the number of waiters), then the CPU
time per task while they come through at R/s and the rate achieved, and FIFO:
the order in which tasks got through against the order in which they reserved
(positions that differ, the largest displacement). A separate run under
``tracemalloc`` (nobody due for 100 s) gives the memory per waiting task.

Part 2, threads. ``T`` threads (1, 8, 64) loop ``r = bucket.reserve();
time.sleep(r.delay)`` on one ``TokenBucket(rate=--thread-rate)`` for
``--seconds``: the rate achieved against the configured one, and the time
spent inside ``reserve()`` (p50, p99, max); a lock convoy would show as a p99
that grows with T. The control row runs the same 64 threads with a bucket
each (rate/64): the same reserve() code with no lock shared, so the
difference between it and the shared row is what sharing the lock costs.
Also how late threads wake after their slot (p99) and the
process CPU time over wall time. The floor row times an empty call the same way in 64
threads paced alike, i.e. what the GIL alone adds to such a measurement.

Variants are interleaved round by round in a rotated order; tables show medians.
Run: ``python benchmarks/bench_scale.py [--quick] [--repeat 3] [--tasks 10000] [--rate 2000] [--lead 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import threading
import time
import tracemalloc
import types
from collections.abc import Awaitable, Callable
from typing import Any

import _harness as h
import grpc

import grpc_throttle
import grpc_throttle.aio

# -- part 1: asyncio ------------------------------------------------------------

RESPONSE = types.SimpleNamespace(status=types.SimpleNamespace(code=10000))  # SUCCESS: not throttled
DETAILS = grpc.aio.ClientCallDetails("/bench.Scale/Wait", None, None, None, None)


class _Answered:
    """What ``await continuation(...)`` hands the aio interceptor: awaiting it gives the answer."""

    def __await__(self) -> Any:
        return RESPONSE
        yield  # a generator, as __await__ must be

    def cancel(self) -> bool:
        return False


WaiterFactory = Callable[[int, list[int], list[float]], Awaitable[None]]


def waiters(variant: str, rate: float, lead: float) -> tuple[WaiterFactory, Callable[[], int]]:
    """``(make(i, done, done_at), reserved_count)`` for one variant: a fresh bucket and schedule.

    The first slot is ``lead`` seconds away (the bucket's schedule is filled that
    far ahead first), so every task waits at least that long.
    """
    reserved: list[int] = []
    if variant == "asyncio.sleep only":
        t0 = time.monotonic() + lead

        async def bare(i: int, done: list[int], done_at: list[float]) -> None:
            reserved.append(i)
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            done.append(i)
            done_at.append(time.monotonic())

        return bare, lambda: len(reserved)
    bucket = grpc_throttle.TokenBucket(rate=rate)
    for _ in range(round(lead * rate)):
        bucket.reserve()
    if variant.startswith("reserve()"):
        until_ready_at = "ready_at" in variant

        async def direct(i: int, done: list[int], done_at: list[float]) -> None:
            reservation = bucket.reserve()
            assert reservation is not None
            reserved.append(i)
            try:
                if until_ready_at:
                    # A timer at the absolute ready_at (the bucket's clock, time.monotonic,
                    # is the default loop's): a pause (GC) before it is set cannot move it.
                    loop = asyncio.get_running_loop()
                    due = loop.create_future()
                    timer = loop.call_at(reservation.ready_at, due.set_result, None)
                    try:
                        await due
                    finally:
                        timer.cancel()
                elif reservation.delay > 0:
                    # As the aio interceptor does: sleep ``delay``, counted from when the
                    # timer is set, so a pause (GC) after reserve() moves the wake-up.
                    await asyncio.sleep(reservation.delay)
            except asyncio.CancelledError:
                reservation.cancel()
                raise
            done.append(i)
            done_at.append(time.monotonic())

        return direct, lambda: len(reserved)
    interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket)

    async def via_interceptor(i: int, done: list[int], done_at: list[float]) -> None:
        async def continuation(details: Any, request: Any) -> _Answered:
            done.append(i)  # the attempt goes ahead: this task is through the bucket
            done_at.append(time.monotonic())
            return _Answered()

        # The interceptor runs without suspending until reserve(): this is the reservation order.
        reserved.append(i)
        await interceptor.intercept_unary_unary(continuation, DETAILS, None)

    return via_interceptor, lambda: len(reserved)


async def timed_async(variant: str, tasks: int, rate: float, lead: float) -> dict[str, Any]:
    make, reserved = waiters(variant, rate, lead)
    done: list[int] = []
    done_at: list[float] = []
    gc.collect()
    cpu0, wall0 = time.process_time(), time.monotonic()
    running = [asyncio.ensure_future(make(i, done, done_at)) for i in range(tasks)]
    await asyncio.sleep(0)  # one turn of the loop: every task runs up to its first real wait
    assert reserved() == tasks, "a waiter suspended before it reserved"
    cpu1, wall1 = time.process_time(), time.monotonic()
    await asyncio.sleep(max(0.0, wall0 + 0.8 * lead - wall1))  # nobody is due yet: all wait
    cpu2, wall2 = time.process_time(), time.monotonic()
    assert not done, "a waiter got through before its slot"
    await asyncio.gather(*running)
    cpu3, wall3 = time.process_time(), time.monotonic()
    # Every task reserved in index order (asyncio starts ready tasks FIFO), so
    # done[k] == k means the k-th to reserve was the k-th through.
    moved = [abs(task - position) for position, task in enumerate(done)]
    span = done_at[-1] - done_at[0]
    return {
        "spawn_wall_s": wall1 - wall0,
        "spawn_cpu_us_per_task": (cpu1 - cpu0) / tasks * 1e6,
        "idle_wall_s": wall2 - wall1,
        "idle_cpu_ms": (cpu2 - cpu1) * 1e3,
        "drain_wall_s": wall3 - wall2,
        "drain_cpu_us_per_task": (cpu3 - cpu2) / tasks * 1e6,
        "drain_cpu_per_wall": (cpu3 - cpu2) / (wall3 - wall2),
        "achieved_rate": (tasks - 1) / span if span > 0 else math.nan,
        "out_of_order": sum(1 for m in moved if m),
        "max_displacement": max(moved),
    }


async def memory_async(variant: str, tasks: int) -> float:
    """Bytes per waiting task (tracemalloc); none is due for 100 s."""
    make, reserved = waiters(variant, 10.0, 100.0)
    done: list[int] = []
    done_at: list[float] = []
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    running = [asyncio.ensure_future(make(i, done, done_at)) for i in range(tasks)]
    await asyncio.sleep(0)  # one turn of the loop: every task runs up to its first real wait
    assert reserved() == tasks, "a waiter suspended before it reserved"
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    return (after - before) / tasks


ASYNC_VARIANTS = ("asyncio.sleep only", "reserve() + sleep", "reserve() + call_at(ready_at)", "aio interceptor")

# -- part 2: threads --------------------------------------------------------------


def _empty() -> None:
    return None


def threaded(threads: int, rate: float, seconds: float, mode: str) -> dict[str, Any]:
    """``mode``: "shared" (one bucket), "own" (a bucket of rate/threads each), "empty" (no bucket)."""
    shared = grpc_throttle.TokenBucket(rate=rate)
    own = [grpc_throttle.TokenBucket(rate=rate / threads) for _ in range(threads)]
    floor = mode == "empty"
    inside: list[list[float]] = [[] for _ in range(threads)]
    through: list[list[float]] = [[] for _ in range(threads)]
    late: list[list[float]] = [[] for _ in range(threads)]
    start = time.monotonic() + 0.05
    stop = start + seconds
    clock, perf = time.monotonic, time.perf_counter

    def work(k: int) -> None:
        spent, passed, lateness = inside[k], through[k], late[k]
        bucket = own[k] if mode == "own" else shared
        time.sleep(max(0.0, start - clock()))
        slot = start + k / rate
        while clock() < stop:
            t0 = perf()
            if floor:
                _empty()
                delay = slot - clock()
                slot += threads / rate
            else:
                reservation = bucket.reserve()
                assert reservation is not None
                delay = reservation.delay
            spent.append(perf() - t0)
            due = clock() + delay
            if delay > 0:
                time.sleep(delay)
            now = clock()
            passed.append(now)
            lateness.append(now - due)

    cpu0 = time.process_time()
    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    cpu = time.process_time() - cpu0
    times = sorted(t for per in through for t in per)
    spent = [x for per in inside for x in per]
    span = times[-1] - times[0]
    return {
        "achieved_rate": (len(times) - 1) / span if span > 0 else math.nan,
        "acquired": len(times),
        "reserve_p50_us": h.percentile(spent, 50) * 1e6,
        "reserve_p99_us": h.percentile(spent, 99) * 1e6,
        "reserve_max_us": max(spent) * 1e6,
        "lateness_p99_ms": h.percentile([x for per in late for x in per], 99) * 1e3,
        "cpu_per_wall": cpu / (time.monotonic() - start),
    }


# -- main ------------------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: h.median([r[key] for r in runs]) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (2,000 tasks, 1 s of threads, 1 round)")
    parser.add_argument("--tasks", type=int, default=None, help="asyncio tasks (default 10,000)")
    parser.add_argument("--rate", type=float, default=2000.0, help="bucket rate for the asyncio tasks, tokens/s")
    parser.add_argument("--lead", type=float, default=2.0, help="seconds until the first task is due")
    parser.add_argument("--thread-rate", type=float, default=2000.0, help="bucket rate for the threads, tokens/s")
    parser.add_argument("--seconds", type=float, default=None, help="length of each threads run (default 4)")
    parser.add_argument("--threads", default="1,8,64", help="thread counts")
    parser.add_argument("--repeat", type=int, default=None, help="rounds (default 3)")
    args = parser.parse_args()
    tasks = args.tasks or (2000 if args.quick else 10_000)
    seconds = args.seconds or (1.0 if args.quick else 4.0)
    repeat = args.repeat or (1 if args.quick else 3)
    counts = [int(t) for t in args.threads.split(",")]
    print(f"# bench_scale: {tasks} asyncio tasks at {args.rate:g}/s; threads {args.threads} at {args.thread_rate:g}/s")
    print(f"# for {seconds:g} s; median of {repeat} rounds\n")

    async_runs: dict[str, list[dict[str, Any]]] = {}
    memory: dict[str, list[float]] = {}
    thread_runs: dict[str, list[dict[str, Any]]] = {}
    thread_cases = [(f"{n} thread{'s' * (n > 1)}", n, "shared") for n in counts]
    thread_cases.append((f"{max(counts)} threads, a bucket each (rate/{max(counts)})", max(counts), "own"))
    thread_cases.append((f"{max(counts)} threads, empty call (floor)", max(counts), "empty"))
    for index in range(repeat):
        for variant in h.rotated(ASYNC_VARIANTS, index):
            memory.setdefault(variant, []).append(asyncio.run(memory_async(variant, tasks)))
        for variant in h.rotated(ASYNC_VARIANTS, index):
            run = asyncio.run(timed_async(variant, tasks, args.rate, args.lead))
            async_runs.setdefault(variant, []).append(run)
            print(
                f"  {variant:<30} idle CPU {run['idle_cpu_ms']:5.1f} ms  drain {run['drain_wall_s']:5.2f} s  "
                f"{run['drain_cpu_us_per_task']:4.0f} µs/task  out of order {run['out_of_order']}",
                flush=True,
            )
        for label, n, mode in h.rotated(thread_cases, index):
            run = threaded(n, args.thread_rate, seconds, mode)
            thread_runs.setdefault(label, []).append(run)
            print(
                f"  {label:<32} {run['achieved_rate']:7.1f}/s  reserve p99 {run['reserve_p99_us']:.1f} µs", flush=True
            )

    print()
    async_results = []
    for variant in ASYNC_VARIANTS:
        summary = summarise(async_runs[variant])
        summary["memory_bytes_per_task"] = h.median(memory[variant])
        summary["out_of_order_per_run"] = [r["out_of_order"] for r in async_runs[variant]]
        async_results.append({"variant": variant, **summary, "runs": async_runs[variant]})
    rows = [
        [
            r["variant"],
            f"{r['spawn_wall_s']:.3f} ({r['spawn_cpu_us_per_task']:.0f})",
            f"{r['idle_cpu_ms']:.1f} in {r['idle_wall_s']:.2f} s",
            f"{r['drain_wall_s']:.2f}",
            f"{r['drain_cpu_us_per_task']:.0f} ({r['drain_cpu_per_wall'] * 100:.0f}%)",
            f"{r['achieved_rate']:.0f}",
            f"{r['memory_bytes_per_task']:.0f}",
            ", ".join(f"{n}" for n in r["out_of_order_per_run"]) + f" (max shift {r['max_displacement']:.0f})",
        ]
        for r in async_results
    ]
    headers = ["asyncio waiters", "start s (CPU µs/task)", "CPU ms while all wait", "through in s"]
    headers += ["CPU µs/task through (÷ wall)", "achieved/s", "bytes per waiter", "out of FIFO order, per run"]
    print(f"{tasks} asyncio tasks on one TokenBucket(rate={args.rate:g}), first due after {args.lead:g} s\n")
    print(h.table(headers, rows))

    thread_results = [
        {"case": label, **summarise(thread_runs[label]), "runs": thread_runs[label]} for label, *_ in thread_cases
    ]
    rows = [
        [
            r["case"],
            f"{r['achieved_rate']:.0f} ({r['achieved_rate'] / args.thread_rate:.3f})",
            f"{r['reserve_p50_us']:.1f}",
            f"{r['reserve_p99_us']:.1f}",
            f"{r['reserve_max_us']:.0f}",
            f"{r['lateness_p99_ms']:.2f}",
            f"{r['cpu_per_wall'] * 100:.0f}%",
        ]
        for r in thread_results
    ]
    headers = ["threads", "achieved/s (÷ configured)", "reserve p50 µs", "reserve p99 µs", "reserve max µs"]
    headers += ["wake-up lateness p99 ms", "CPU / wall"]
    print(f"\nthreads on one TokenBucket(rate={args.thread_rate:g}), {seconds:g} s each\n")
    print(h.table(headers, rows))
    config = {"tasks": tasks, "rate": args.rate, "lead": args.lead, "thread_rate": args.thread_rate, "seconds": seconds}
    config |= {"threads": counts, "repeat": repeat}
    path = h.write_json("bench_scale", {"config": config, "asyncio": async_results, "threads": thread_results})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
