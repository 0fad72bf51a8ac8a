"""Steady load from threads, asyncio tasks and child processes, each call's outcome in a ledger.

A :class:`Crowd` runs one :class:`Load` (which service, which commands, how
long, what timeout) from threads and tasks of this process and from child
processes (this module's :func:`child_main`), every call with its own id.
:func:`leaked_threads` and :func:`leaked_tasks` say what outlived a run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio

import grpc_throttle.aio
from grpc_throttle import ThrottlingInterceptor
from tests.faults_lib import (
    CHANNEL_OPTIONS,
    FAST_RETRY,
    POLICIES,
    SERVICES,
    STYLES,
    TESTS,
    Backend,
    Ledger,
    call_aio,
    call_sync,
    sync_methods,
)


@dataclasses.dataclass(frozen=True)
class Load:
    """What every caller of a crowd does: calls back to back until ``seconds`` are over."""

    prefix: str
    service: str = "echo"
    policy: str = "echo"
    #: Commands cycled through (see scripted.py; FaultServer adds a few for odd bodies).
    commands: tuple[str, ...] = ("ok",)
    seconds: float = 2.0
    timeout: float = 3.0
    #: Sleep after each call (callers that come back later rather than spin).
    pause: float = 0.0
    #: A bound on the calls of one caller, whatever happens.
    max_calls: int = 5000
    #: The interceptors' retry budget (False: none, so every throttled answer is retried).
    budget: bool = True


#: A caller told at once that no token comes in time tries again after this (rather than spin).
REFUSED_PAUSE = 0.02


def _plan(load: Load, index: int) -> tuple[str, str, int]:
    """Command, call style and channel (of two) of a crowd's ``index``-th call.

    Each command comes three times in a row, once per call style, so the first
    commands are tried in every style even by a short run; every triple within
    six rounds of commands.
    """
    n = len(load.commands)
    return load.commands[index // len(STYLES) % n], STYLES[index % len(STYLES)], index // (n * len(STYLES)) % 2


def thread_caller(
    ledger: Ledger, methods: list[Any], load: Load, name: str, counter: Iterator[int], end: float
) -> None:
    """One thread's share of a load, in every call style, on both channel kinds."""
    service = SERVICES[load.service]
    k = 0
    while time.monotonic() < end and k < load.max_calls:
        call_id = f"{load.prefix}.{name}.{k}"
        command, style, channel = _plan(load, next(counter))
        ledger.begin(call_id, command)
        outcome = call_sync(methods[channel], service, call_id, command, style, load.timeout)
        ledger.record(call_id, outcome)
        k += 1
        if load.pause or outcome.local:
            time.sleep(max(load.pause, REFUSED_PAUSE))


async def task_caller(ledger: Ledger, method: Any, load: Load, name: str, counter: Iterator[int], end: float) -> None:
    service = SERVICES[load.service]
    k = 0
    while time.monotonic() < end and k < load.max_calls:
        call_id = f"{load.prefix}.{name}.{k}"
        command, _, _ = _plan(load, next(counter))
        ledger.begin(call_id, command)
        outcome = await call_aio(method, service, call_id, command, load.timeout)
        ledger.record(call_id, outcome)
        k += 1
        if load.pause or outcome.local:
            await asyncio.sleep(max(load.pause, REFUSED_PAUSE))


def fixed_thread(thread: threading.Thread) -> bool:
    """Threads that live as long as the process, not a call.

    grpc-throttle's timer thread and its pool of at most 8 workers, and grpc.aio's
    poller, which grpc stops only once no aio object is left (pytest's log capture
    keeps the tracebacks of logged exceptions, and the calls in them, until the test ends).
    """
    return (
        thread.name == "grpc-throttle-timers"
        or thread.name.startswith("grpc-throttle_")
        or thread.name.endswith("(_poll_wrapper)")
    )


def leaked_threads(baseline: set[threading.Thread], settle: float = 5.0) -> list[str]:
    """Threads started since ``baseline`` still alive after ``settle`` s, the fixed ones aside."""
    end = time.monotonic() + settle
    while True:
        gc.collect()  # grpc.aio keeps its poller thread while garbage cycles still hold a call
        extra = [t for t in threading.enumerate() if t not in baseline and not fixed_thread(t)]
        if not extra or time.monotonic() > end:
            return sorted(t.name for t in extra)
        time.sleep(0.05)


async def leaked_tasks(baseline: set[asyncio.Task[Any]], settle: float = 3.0) -> list[str]:
    end = time.monotonic() + settle
    while True:
        extra = asyncio.all_tasks() - baseline - {asyncio.current_task()}
        if not extra or time.monotonic() > end:
            return sorted(repr(t.get_coro()) for t in extra)
        await asyncio.sleep(0.02)


# -- the crowd: threads, tasks and processes ------------------------------------------------


class Crowd:
    """Threads and asyncio tasks of this process, and child processes, running one :class:`Load`.

    Threads share one sync bucket (or the local one), tasks run in one event loop
    of their own thread with an asyncio bucket (the same ``TokenBucket`` when
    local), and each child process builds ``child_backend``'s bucket.
    """

    def __init__(
        self,
        target: str,
        load: Load,
        backend: Backend,
        *,
        threads: int,
        tasks: int,
        processes: int = 0,
        process_threads: int = 2,
        child_backend: Backend | None = None,
    ) -> None:
        self.target, self.load, self.backend = target, load, backend
        self.ledger = Ledger()
        self.bucket = backend.sync_bucket()
        #: The asyncio bucket, once the loop made it (the local bucket is shared).
        self.aio_bucket: Any = self.bucket if backend.kind == "local" else None
        #: Problems found inside the loop or the children (leaks, crashes).
        self.problems: list[str] = []
        self.aio_leaks: list[str] = []
        self._threads_n, self._tasks_n = threads, tasks
        self._children = [
            _Child(target, dataclasses.replace(load, prefix=f"{load.prefix}.p{i}"), child_backend or backend)
            for i in range(processes)
        ]
        self._process_threads = process_threads
        self._workers: list[threading.Thread] = []
        self._channels: list[Any] = []
        self._aio_ready = threading.Event()

    def start(self) -> Crowd:
        for child in self._children:
            child.spawn(self._process_threads)
        for child in self._children:
            child.wait_ready()
        policy = POLICIES[self.load.policy]
        interceptor = ThrottlingInterceptor(self.bucket, retry=FAST_RETRY, throttle=policy, budget=self.load.budget)
        methods, self._channels = sync_methods(self.target, interceptor, SERVICES[self.load.service])
        end = time.monotonic() + self.load.seconds
        for child in self._children:
            child.go()
        counter = itertools.count()  # shared: the crowd as a whole goes through every command and style
        for i in range(self._threads_n):
            args = (self.ledger, methods, self.load, f"t{i}", counter, end)
            self._workers.append(threading.Thread(target=thread_caller, args=args, daemon=True))
        if self._tasks_n:
            self._workers.append(threading.Thread(target=asyncio.run, args=(self._aio(end),), daemon=True))
        for worker in self._workers:
            worker.start()
        if self._tasks_n:
            self._aio_ready.wait(10)
        return self

    async def _aio(self, end: float) -> None:
        baseline = asyncio.all_tasks()
        if self.aio_bucket is None:
            self.aio_bucket = self.backend.aio_bucket()
        self._aio_ready.set()
        policy = POLICIES[self.load.policy]
        interceptor = grpc_throttle.aio.ThrottlingInterceptor(
            self.aio_bucket, retry=FAST_RETRY, throttle=policy, budget=self.load.budget
        )
        service = SERVICES[self.load.service]
        try:
            async with grpc.aio.insecure_channel(
                self.target, options=CHANNEL_OPTIONS, interceptors=[interceptor]
            ) as ch:
                method = ch.unary_unary(service.method, service.serializer, service.deserializer)
                counter = itertools.count()
                callers = [
                    task_caller(self.ledger, method, self.load, f"a{i}", counter, end) for i in range(self._tasks_n)
                ]
                await asyncio.gather(*callers)
            if self.backend.kind == "redis":
                await self.aio_bucket.aclose()
            self.aio_leaks = await leaked_tasks(baseline)
        except Exception as error:  # reported as a failed invariant, not lost in a thread
            self.problems.append(f"asyncio load crashed: {error!r}")

    def join(self) -> Crowd:
        """Wait for every caller (a bounded wait: a caller still running then is reported, not waited for)."""
        limit = time.monotonic() + self.load.seconds + self.load.timeout + 15
        for worker in self._workers:
            worker.join(max(0.0, limit - time.monotonic()))
            if worker.is_alive():
                self.problems.append(f"{worker.name} still running {self.load.timeout + 15:.0f}s after its load")
        for channel in self._channels:
            channel.close()
        for child in self._children:
            report = child.finish(max(0.0, limit - time.monotonic()) + 5)
            if "error" in report:
                self.problems.append(report["error"])
                continue
            self.ledger.merge(report["begun"], report["outcomes"])
            self.problems += [f"{child.name}: {p}" for p in report["problems"]]
        if self.backend.kind == "redis":
            self.bucket.close()
        return self

    def shared_now(self) -> bool:
        """True while every Redis bucket of this process uses Redis (not its fallback)."""
        buckets = [b for b in (self.bucket, self.aio_bucket) if b is not None]
        return all(getattr(b, "shared", True) for b in buckets)


class _Child:
    """A worker process running a load's threads with a bucket of its own."""

    def __init__(self, target: str, load: Load, backend: Backend) -> None:
        self.name = load.prefix
        self._spec = {"target": target, "load": dataclasses.asdict(load), "backend": dataclasses.asdict(backend)}
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str] = queue.Queue()

    def spawn(self, threads: int) -> None:
        code = "from tests import faults_crowd; faults_crowd.child_main()"
        self._proc = subprocess.Popen(  # run from the repository root, where `tests` is a package
            [sys.executable, "-c", code], cwd=TESTS.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({**self._spec, "threads": threads}) + "\n")
        self._proc.stdin.flush()
        threading.Thread(target=self._pump, name=f"pump-{self.name}", daemon=True).start()

    def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        with self._proc.stdout as out:
            for line in out:
                self._lines.put(line)
        self._lines.put("")

    def wait_ready(self) -> None:
        try:
            line = self._lines.get(timeout=30)
        except queue.Empty:
            line = ""
        if line.strip() != "ready":
            raise RuntimeError(f"{self.name} did not start: {line!r}")

    def go(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write("go\n")
        self._proc.stdin.close()

    def finish(self, timeout: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin is not None
        if not self._proc.stdin.closed:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            return {"error": f"{self.name} hung: killed after {timeout:.0f}s, its calls are lost"}
        while True:
            try:
                line = self._lines.get(timeout=5)
            except queue.Empty:
                line = ""
            if not line:
                return {"error": f"{self.name} exited {self._proc.returncode} without a report"}
            if line.startswith("{"):
                return dict(json.loads(line))


def child_main() -> None:
    """A child process: read the spec, say ready, wait for go, run the threads, report as JSON."""
    spec = json.loads(sys.stdin.readline())
    load, backend = Load(**{**spec["load"], "commands": tuple(spec["load"]["commands"])}), Backend(**spec["backend"])
    baseline = set(threading.enumerate())
    bucket = backend.sync_bucket()
    interceptor = ThrottlingInterceptor(bucket, retry=FAST_RETRY, throttle=POLICIES[load.policy], budget=load.budget)
    methods, channels = sync_methods(spec["target"], interceptor, SERVICES[load.service])
    print("ready", flush=True)
    sys.stdin.readline()
    ledger = Ledger()
    end = time.monotonic() + load.seconds
    counter = itertools.count()
    workers = [
        threading.Thread(target=thread_caller, args=(ledger, methods, load, f"t{i}", counter, end), daemon=True)
        for i in range(spec["threads"])
    ]
    for worker in workers:
        worker.start()
    problems = []
    for worker in workers:
        worker.join(load.seconds + load.timeout + 10)
        if worker.is_alive():
            problems.append(f"{worker.name} still running after its load")
    for channel in channels:
        channel.close()
    if backend.kind == "redis":
        bucket.close()
    leaks = leaked_threads(baseline)
    if leaks:
        problems.append(f"leaked threads {leaks}")
    print(json.dumps({**ledger.to_json(), "problems": problems}), flush=True)
