"""Fault scenarios under steady load, each followed by invariant checks.

Every scenario runs a :class:`~faults_crowd.Crowd` (threads, asyncio tasks, child
processes) against a :class:`~faults_lib.FaultServer`, injects its fault while
the load runs, and returns one :class:`Check` per invariant. ``SHORT`` is the
scale of ``tests/test_faults.py``; ``scripts/faults.py`` runs ``LONG``.

The invariants, checked after every scenario:

- every call came back exactly once: a response or an error, none lost, none
  hung past its deadline;
- the server executed every successful call exactly once (throttled answers
  are not executions; a failed call ran at most once) and each answer belongs
  to its own call;
- the server never saw more than ``quota * 1 s + burst + slack`` requests in
  any one-second window (``slack`` allows 100 ms of scheduling jitter);
- no thread outlived the scenario but grpc-throttle's fixed timer thread and
  its pool of at most 8 workers (and grpc.aio's one poller, see
  :func:`~faults_crowd.fixed_thread`), and no asyncio task outlived its loop's load;
- whatever the fault adds (deadlines kept, tokens given back, recovery...).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

import grpc_throttle.aio
from grpc_throttle import ThrottlingInterceptor
from tests.faults_crowd import Crowd, Load, fixed_thread, leaked_tasks, leaked_threads
from tests.faults_lib import (
    FAST_RETRY,
    SERVICES,
    Backend,
    FaultServer,
    Ledger,
    Outcome,
    call_aio,
    call_sync,
    max_in_window,
    sync_methods,
)
from tests.redis_server import RedisServer
from tests.scripted import ECHO_POLICY


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big a run is."""

    #: Callers in this process: threads, and asyncio tasks (in one loop).
    threads: int
    tasks: int
    #: Child processes, and the threads calling in each.
    processes: int
    process_threads: int
    #: Seconds of load per scenario.
    seconds: float
    #: Futures (and tasks) cancelled at once.
    cancel: int
    #: Faults injected per scenario (restarts, Redis kills).
    faults: int
    #: Calls per second allowed to all callers together, in the scenarios that do not test queueing.
    quota: float

    @property
    def callers(self) -> int:
        return self.threads + self.tasks + self.processes * self.process_threads


SHORT = Scale(threads=3, tasks=6, processes=1, process_threads=2, seconds=2.5, cancel=150, faults=2, quota=60)
LONG = Scale(threads=8, tasks=24, processes=3, process_threads=4, seconds=12.0, cancel=800, faults=4, quota=150)


@dataclasses.dataclass(frozen=True)
class Check:
    scenario: str
    invariant: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"[{'ok' if self.ok else 'BROKEN'}] {self.scenario}: {self.invariant}: {self.detail}"


class Report:
    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.checks: list[Check] = []

    def check(self, invariant: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(self.scenario, invariant, bool(ok), detail))


def _some(items: Any, n: int = 3) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (" ..." if len(items) > n else "") if items else "none"


# -- invariants ------------------------------------------------------------------------


def check_calls(report: Report, ledger: Ledger, server: FaultServer, problems: Sequence[str] = ()) -> None:
    """Exactly once, answers to the right call, successes executed once, nothing crashed in a caller."""
    begun, outcomes = ledger.begun, ledger.outcomes
    lost = [i for i in begun if not outcomes.get(i)]
    twice = [i for i, o in outcomes.items() if len(o) > 1]
    hung = [i for i, o in outcomes.items() if any(x.kind == "hung" for x in o)]
    kinds = collections.Counter(o.kind for v in outcomes.values() for o in v)
    codes = collections.Counter(o.code for v in outcomes.values() for o in v if o.kind != "ok")
    report.check(
        "every call came back exactly once",
        not lost and not twice and not hung and not problems and begun,
        f"{len(begun)} calls {dict(kinds)} {dict(codes)}; lost {len(lost)} ({_some(lost)}), "
        f"twice {len(twice)} ({_some(twice)}), hung {len(hung)} ({_some(hung)}); problems: {_some(problems)}",
    )
    final = ledger.final()
    wrong = [i for i, o in final.items() if not o.matches]
    report.check("each answer belongs to its call", not wrong, f"mismatched: {len(wrong)} ({_some(wrong)})")
    script = server.script
    with script.lock:
        executed = dict(script.executed)
    bad = []
    for call_id, outcome in final.items():
        runs = executed.get(call_id, 0)
        if (outcome.kind == "ok" and runs != 1) or (outcome.kind == "throttled" and runs != 0) or runs > 1:
            bad.append(f"{call_id}={outcome.kind}/ran {runs}x")
    phantom = [i for i in executed if i not in begun]
    ok = sum(1 for o in final.values() if o.kind == "ok")
    report.check(
        "the server executed each success exactly once",
        not bad and not phantom,
        f"{ok} successes; wrong: {len(bad)} ({_some(bad)}); executed but never called: {_some(phantom)}",
    )


def slack(quota: float) -> float:
    """Requests a window may hold beyond the quota: 100 ms of scheduling jitter, and 2."""
    return 0.1 * quota + 2


def check_rate(report: Report, server: FaultServer, quota: float, burst: float) -> None:
    most, at = max_in_window(server.script.arrivals())
    bound = quota + burst + slack(quota)
    start = server.script.log[0][0] if server.script.log else 0.0
    report.check(
        "the rate never exceeded the quota",
        most <= bound,
        f"most requests in 1 s: {most} (at +{at - start:.2f}s), bound {bound:g} = {quota:g}/s + burst {burst:g}"
        f" + slack {slack(quota):g}",
    )


def check_threads(report: Report, baseline: set[threading.Thread]) -> None:
    leaks = leaked_threads(baseline)
    fixed = [t for t in threading.enumerate() if fixed_thread(t)]
    library = [t for t in fixed if t.name.startswith("grpc-throttle")]
    extra = threading.active_count() - len(baseline)
    report.check(
        "no thread leaked",
        not leaks and len(library) <= 9 and len(fixed) - len(library) <= 1,
        f"{extra:+d} threads vs baseline; fixed: {len(library)} grpc-throttle timer/workers (at most 9), "
        f"{len(fixed) - len(library)} grpc.aio poller (at most 1); leaked: {_some(leaks)}",
    )


def check_tasks(report: Report, leaks: list[str]) -> None:
    report.check("no asyncio task leaked", not leaks, f"leaked: {_some(leaks)}")


def check_deadlines(report: Report, ledger: Ledger, timeout: float, late: float = 0.5) -> None:
    """Every call came back by its deadline (plus ``late`` for a loaded machine)."""
    final = ledger.final()
    over = sorted((o.elapsed, i) for i, o in final.items() if o.elapsed > timeout + late)
    worst = max((o.elapsed for o in final.values()), default=0.0)
    report.check(
        "every call returned by its deadline",
        not over,
        f"timeout {timeout}s, slowest {worst:.3f}s; late: {len(over)} ({_some(f'{i} {e:.2f}s' for e, i in over)})",
    )


def recovered_after(ledger: Ledger, server: FaultServer, when: float) -> int:
    """Successful calls that reached the server after ``when``."""
    final = ledger.final()
    with server.script.lock:
        after = {call_id for t, call_id, _, _ in server.script.log if t > when}
    return sum(1 for i in after if i in final and final[i].kind == "ok")


def _quota_split(quota: float, scale: Scale) -> tuple[Backend, Backend]:
    """Local buckets for this process and for each child, sharing ``quota`` in proportion to their callers."""
    per_caller = quota / scale.callers
    mine = Backend("local", per_caller * (scale.threads + scale.tasks), 1.0)
    return mine, Backend("local", per_caller * scale.process_threads, 1.0)


def _crowd(server: FaultServer, load: Load, backend: Backend, scale: Scale, child: Backend | None = None) -> Crowd:
    return Crowd(
        server.target,
        load,
        backend,
        threads=scale.threads,
        tasks=scale.tasks,
        processes=scale.processes,
        process_threads=scale.process_threads,
        child_backend=child,
    )


# -- scenarios ---------------------------------------------------------------------------


def server_restart(scale: Scale) -> list[Check]:
    """The server is stopped mid-load and a new one started on the same port, ``faults`` times."""
    report = Report("server restart")
    baseline = set(threading.enumerate())
    quota = scale.quota
    mine, theirs = _quota_split(quota, scale)
    load = Load("restart", commands=("ok", "ok", "throttle=1", "ok"), seconds=scale.seconds, timeout=2.0)
    with FaultServer() as server:
        crowd = _crowd(server, load, mine, scale, theirs).start()
        gap = scale.seconds / (scale.faults + 1)
        for _ in range(scale.faults):
            time.sleep(gap - 0.2)
            server.restart(down=0.2)
        crowd.join()
    check_calls(report, crowd.ledger, server, crowd.problems)
    ups = recovered_after(crowd.ledger, server, server.restarts[-1][1])
    report.check("calls succeed again after the last restart", ups > 0, f"{ups} successes after it")
    check_rate(report, server, quota, scale.processes + 1)
    check_tasks(report, crowd.aio_leaks)
    check_threads(report, baseline)
    return report.checks


def server_stall(scale: Scale) -> list[Check]:
    """Every handler sleeps 1 s, longer than the calls' 0.4 s deadline, for a while; then recovers."""
    report = Report("server stall")
    baseline = set(threading.enumerate())
    quota, timeout = scale.quota, 0.4
    mine, theirs = _quota_split(quota, scale)
    load = Load("stall", seconds=scale.seconds, timeout=timeout)
    with FaultServer(workers=256) as server:
        crowd = _crowd(server, load, mine, scale, theirs).start()
        time.sleep(scale.seconds * 0.25)
        server.stall = 1.0
        time.sleep(scale.seconds * 0.35)
        server.stall = 0.0
        stall_end = time.monotonic()
        crowd.join()
    ledger = crowd.ledger
    check_calls(report, ledger, server, crowd.problems)
    check_deadlines(report, ledger, timeout)
    final = ledger.final()
    stalled = [i for i, o in final.items() if o.code == "DEADLINE_EXCEEDED"]
    retried = [i for i in final if server.script.attempts_of(i) > 1]
    report.check(
        "stalled calls failed DEADLINE_EXCEEDED once, never retried",
        stalled and not retried,
        f"{len(stalled)} deadline failures; sent more than once: {len(retried)} ({_some(retried)})",
    )
    ups = recovered_after(ledger, server, stall_end + 1.0)
    report.check("calls succeed again after the stall", ups > 0, f"{ups} successes after it")
    check_rate(report, server, quota, scale.processes + 1)
    check_tasks(report, crowd.aio_leaks)
    check_threads(report, baseline)
    return report.checks


def _redis_backend(url: str, quota: float, scale: Scale) -> Backend:
    # Each bucket object falls back to its own local bucket: this process's sync
    # and asyncio buckets and one per child share the quota between them.
    share = 1.0 / (2 + scale.processes)
    return Backend("redis", quota, 2.0, url=url, key=f"faults-{uuid.uuid4().hex[:8]}", local_share=share)


class _Sampler:
    """Samples ``crowd.shared_now()`` every 10 ms in a thread: did the buckets fall back, and when."""

    def __init__(self, crowd: Crowd) -> None:
        self.samples: list[tuple[float, bool]] = []
        self._crowd = crowd
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.samples.append((time.monotonic(), self._crowd.shared_now()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def redis_outage(scale: Scale) -> list[Check]:
    """Redis is stopped mid-load and started again (empty) on its port, ``faults`` times; on_failure="local"."""
    report = Report("redis killed")
    baseline = set(threading.enumerate())
    quota = scale.quota
    load = Load("redis", seconds=scale.seconds + 1.0, timeout=5.0)
    with RedisServer() as store, FaultServer() as server:
        backend = _redis_backend(store.url, quota, scale)
        crowd = _crowd(server, load, backend, scale).start()
        sampler = _Sampler(crowd)
        gap = load.seconds / (scale.faults + 1)
        outages = []
        for _ in range(scale.faults):
            time.sleep(gap - 0.6)
            down = time.monotonic()
            store.stop()
            time.sleep(0.6)
            store.start()
            outages.append((down, time.monotonic()))
        crowd.join()
        sampler.stop()
    ledger = crowd.ledger
    check_calls(report, ledger, server, crowd.problems)
    failed = {i: o.code for i, o in ledger.final().items() if o.kind != "ok"}
    report.check("no call failed because Redis did", not failed, f"failed: {len(failed)} ({_some(failed.items())})")
    fell = any(not shared for _, shared in sampler.samples)
    last_down = max((t for t, shared in sampler.samples if not shared), default=0.0)
    report.check(
        "the buckets fell back while Redis was down, and came back to it",
        fell and sampler.samples[-1][1],
        f"fell back: {fell}; shared again {last_down - outages[-1][1]:+.2f}s after Redis returned; "
        f"shared at the end: {sampler.samples[-1][1]}",
    )
    check_rate(report, server, quota, backend.capacity)
    check_tasks(report, crowd.aio_leaks)
    check_threads(report, baseline)
    return report.checks


def script_flush(scale: Scale) -> list[Check]:
    """``SCRIPT FLUSH`` every 20 ms under load: the buckets reload their scripts and stay shared."""
    report = Report("script flush")
    baseline = set(threading.enumerate())
    quota = scale.quota
    load = Load("flush", seconds=scale.seconds, timeout=5.0)
    flushes = 0
    with RedisServer() as store, FaultServer() as server:
        backend = _redis_backend(store.url, quota, scale)
        crowd = _crowd(server, load, backend, scale).start()
        sampler = _Sampler(crowd)
        import redis  # only with Redis: the other scenarios run without redis-py

        client = redis.Redis.from_url(store.url)
        end = time.monotonic() + scale.seconds * 0.8
        while time.monotonic() < end:
            client.script_flush()
            flushes += 1
            time.sleep(0.02)
        client.close()
        crowd.join()
        sampler.stop()
    ledger = crowd.ledger
    check_calls(report, ledger, server, crowd.problems)
    failed = {i: o.code for i, o in ledger.final().items() if o.kind != "ok"}
    report.check(
        "no call failed because of SCRIPT FLUSH", not failed, f"{flushes} flushes; failed: {_some(failed.items())}"
    )
    down = sum(1 for _, shared in sampler.samples if not shared)
    report.check("the buckets stayed on Redis", down == 0, f"{down} of {len(sampler.samples)} samples on the fallback")
    check_rate(report, server, quota, backend.capacity)
    check_tasks(report, crowd.aio_leaks)
    check_threads(report, baseline)
    return report.checks


def short_deadlines(scale: Scale) -> list[Check]:
    """Many callers on a slow bucket (20/s) with 0.25 s deadlines: most cannot get a token in time."""
    report = Report("deadlines < token queue")
    baseline = set(threading.enumerate())
    quota, timeout = 20.0, 0.25
    load = Load("short", seconds=scale.seconds, timeout=timeout, pause=0.05)
    crowded = dataclasses.replace(scale, threads=scale.threads * 2, tasks=scale.tasks * 2)
    mine, theirs = _quota_split(quota, crowded)
    with FaultServer() as server:
        crowd = _crowd(server, load, mine, crowded, theirs).start()
        crowd.join()
    ledger = crowd.ledger
    check_calls(report, ledger, server, crowd.problems)
    check_deadlines(report, ledger, timeout)
    final = ledger.final()
    local = {i: o for i, o in final.items() if o.local}
    sent = [i for i in local if server.script.attempts_of(i)]
    slow = sorted(o.elapsed for o in local.values())
    median = slow[len(slow) // 2] if slow else 0.0
    waited = sum(1 for e in slow if e > 0.05)
    report.check(
        "calls that cannot get a token in time fail at once, unsent",
        local and not sent and median < 0.05 and (slow[-1] if slow else 0) < timeout + 0.5,
        f"{len(local)} rejected locally, median {median * 1000:.1f} ms, slowest {slow[-1] if slow else 0:.3f}s "
        f"({waited} after waiting for a token that came too late); sent anyway: {_some(sent)}",
    )
    bucket = crowd.bucket
    time.sleep(2 / mine.rate)
    level = bucket.available()
    fresh = bucket.reserve(max_wait=0.0)
    report.check(
        "the bucket is full again once callers are gone",
        fresh is not None and fresh.delay == 0 and level >= mine.capacity - 0.01,
        f"available {level:.2f} of {mine.capacity:g}; a fresh reservation waits "
        f"{'(refused)' if fresh is None else f'{fresh.delay:.3f}s'}",
    )
    check_rate(report, server, quota, scale.processes + 1)
    check_tasks(report, crowd.aio_leaks)
    check_threads(report, baseline)
    return report.checks


def malformed(scale: Scale) -> list[Check]:
    """Odd bodies (no status, a string code, MBs, undecodable...), the Clarifai shape, a raising predicate."""
    report = Report("malformed answers")
    baseline = set(threading.enumerate())
    odd = ("raising", "bad", "strcode", "oversize", "nostatus", "nullstatus", "floatcode", "listcode", "nocode")
    odd += ("throttle=1", "huge", "ok")
    loads = [  # (load, expected (kind, attempts) per command; None: any answer or error, one attempt)
        Load("odd", "odd", "status-codes", odd, budget=False),
        Load("v2", "v2", "clarifai", ("ok", "throttle=1", "throttle-always", "nostatus", "huge"), budget=False),
        Load("echo-codes", "echo", "status-codes", ("ok", "throttle=1"), budget=False),
        Load("echo-pred", "echo", "raising-predicate", ("ok", "throttle=1"), budget=False),
    ]
    expected: dict[str, dict[str, tuple[str, str, int] | None]] = {
        "odd": {c: ("ok", "OK", 1) for c in odd}
        | {"throttle=1": ("ok", "OK", 2), "oversize": ("error", "RESOURCE_EXHAUSTED", 1), "bad": None, "raising": None},
        "v2": {"ok": ("ok", "OK", 1), "throttle=1": ("ok", "OK", 2), "throttle-always": ("throttled", "OK", 3)}
        | {"nostatus": ("ok", "OK", 1), "huge": ("ok", "OK", 1)},
        "echo-codes": {"ok": ("ok", "OK", 1), "throttle=1": ("throttled", "OK", 1)},
        "echo-pred": {"ok": ("ok", "OK", 1), "throttle=1": ("throttled", "OK", 1)},
    }
    quota = 80.0
    # Few callers per load: a call queued behind many for its tokens would run out of time for its retry.
    few = dataclasses.replace(scale, threads=2, tasks=3, process_threads=2)
    mine, theirs = _quota_split(quota / len(loads), few)
    # A fixed rate: throttled answers slowing the bucket could leave a retry no time (also right, but not the point).
    mine, theirs = dataclasses.replace(mine, adaptive=False), dataclasses.replace(theirs, adaptive=False)
    with FaultServer() as server:
        crowds = []
        for load in loads:
            load = dataclasses.replace(load, seconds=scale.seconds, timeout=5.0)
            crowds.append(_crowd(server, load, mine, few, theirs).start())
        for crowd in crowds:
            crowd.join()
    ledger = Ledger()
    for crowd in crowds:
        ledger.merge(crowd.ledger.begun, {k: [list(o) for o in v] for k, v in crowd.ledger.outcomes.items()})
    check_calls(report, ledger, server, [p for c in crowds for p in c.problems])
    wrong = []
    for call_id, outcome in ledger.final().items():
        want = expected[call_id.split(".")[0]][ledger.begun[call_id]]
        attempts = server.script.attempts_of(call_id)
        got = (outcome.kind, outcome.code, attempts)
        if (want is None and (attempts != 1 or outcome.kind == "hung")) or (want is not None and got != want):
            wrong.append(f"{call_id}:{ledger.begun[call_id]} {got} != {want or 'one attempt'}")
    report.check("each body classified as its shape says", not wrong, f"wrong: {len(wrong)} ({_some(wrong, 4)})")
    check_rate(report, server, quota, len(loads) * (1 + scale.processes))
    check_tasks(report, [t for c in crowds for t in c.aio_leaks])
    check_threads(report, baseline)
    return report.checks


# -- mass cancellation -------------------------------------------------------------------


def _tokens_back(report: Report, level: float, delay: float | None, capacity: float, rate: float, what: str) -> None:
    report.check(
        f"cancelled {what} gave their tokens back",
        level >= capacity - 1.01 and delay is not None and delay <= 2 / rate,
        f"available {level:.2f} (capacity {capacity:g}); a fresh reservation waits "
        f"{'(refused)' if delay is None else f'{delay:.3f}s'} (one interval is {1 / rate:.3f}s)",
    )


def _succeeded(call: Any) -> bool:
    """A finished future or task that ended with an answer."""
    return bool(call.done() and not call.cancelled() and call.exception() is None)


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def mass_cancel(scale: Scale, kind: str = "local", adapting: bool = False) -> list[Check]:
    """Hundreds of pending ``.future()`` calls and of aio tasks on a slow bucket, cancelled at once.

    ``kind`` is the bucket ("local" or "redis"); with ``adapting`` one throttled
    answer comes first, so that the bucket's rate is recovering meanwhile.
    """
    name = f"mass cancel ({kind}{', rate adapting' if adapting else ''})"
    report = Report(name)
    baseline = set(threading.enumerate())
    rate = 10.0
    with _redis_url(kind) as url, FaultServer() as server:
        backend = Backend(kind, rate, 1.0, url=url, key=f"cancel-{uuid.uuid4().hex[:8]}", timeout=1.0)
        bucket = backend.sync_bucket()
        ledger = Ledger()
        _cancel_futures(report, ledger, server, bucket, scale.cancel, adapting)
        time.sleep(2 / rate)
        level = bucket.available()
        fresh = bucket.reserve(max_wait=5.0)
        _tokens_back(report, level, None if fresh is None else fresh.delay, 1.0, rate, "futures")
        if fresh is not None:
            fresh.cancel()
        if kind == "redis":
            bucket.close()
        # The tasks get a bucket of their own: what the futures left behind must not count twice.
        backend = dataclasses.replace(backend, key=backend.key + "-aio")
        leaks = asyncio.run(_cancel_tasks(report, ledger, server, backend, scale.cancel, adapting))
    check_calls(report, ledger, server)
    check_tasks(report, leaks)
    check_threads(report, baseline)
    return report.checks


@contextlib.contextmanager
def _redis_url(kind: str) -> Iterator[str]:
    """A Redis server's URL for ``kind == "redis"``, else an empty string."""
    if kind != "redis":
        yield ""
        return
    with RedisServer() as store:
        yield store.url


def _cancel_futures(
    report: Report, ledger: Ledger, server: FaultServer, bucket: Any, count: int, adapting: bool
) -> None:
    interceptor = ThrottlingInterceptor(bucket, retry=FAST_RETRY, throttle=ECHO_POLICY)
    methods, channels = sync_methods(server.target, interceptor, SERVICES["echo"])
    request = SERVICES["echo"].request
    if adapting:
        ledger.begin("warm", "throttle=1")
        ledger.record("warm", call_sync(methods[0], SERVICES["echo"], "warm", "throttle=1", "blocking", 10.0))
    calls: dict[str, Any] = {}
    callbacks: collections.Counter[str] = collections.Counter()
    timeout = count / bucket.rate + 30  # all of them fit in the queue
    for k in range(count):
        call_id = f"f{k}"
        ledger.begin(call_id, "ok")
        future = methods[k % 2].future(request(f"{call_id}:ok"), timeout=timeout)
        future.add_done_callback(lambda _, i=call_id: callbacks.update([i]))
        calls[call_id] = future
    # Two answers first: a bucket that adapts has moved its rate by then.
    _wait_until(lambda: sum(_succeeded(f) for f in calls.values()) >= 2, 2.0)
    cancelled = {i: f.cancel() for i, f in calls.items()}
    settled = _wait_until(lambda: all(f.done() for f in calls.values()), 3.0)
    inconsistent = []
    for call_id, future in calls.items():
        if not future.done():
            continue
        if future.cancelled():
            ok = cancelled[call_id] and future.code() == grpc.StatusCode.CANCELLED
            ledger.record(call_id, Outcome("cancelled", "CANCELLED", 0.0))
        elif future.exception() is not None:  # e.g. refused at once: its token wait was past the deadline
            ok = not cancelled[call_id]
            ledger.record(call_id, Outcome("error", future.code().name, 0.0))
        else:
            ok = not cancelled[call_id] and future.result().text.startswith(call_id)
            ledger.record(call_id, Outcome("ok", "OK", 0.0))
        if not ok:
            inconsistent.append(call_id)
    again = [i for i, n in callbacks.items() if n != 1] + [i for i in calls if i not in callbacks]
    sent = [i for i, c in cancelled.items() if c and server.script.attempts_of(i)]
    report.check(
        "every cancelled future resolved at once, its callback called once",
        settled and not inconsistent and not again and len(sent) <= 2,
        f"{sum(cancelled.values())} of {count} cancelled; all done within 3 s: {settled}; inconsistent: "
        f"{_some(inconsistent)}; callbacks not exactly once: {_some(again)}; cancelled yet sent: {_some(sent)}",
    )
    ledger.begin("after-futures", "ok")
    after = call_sync(methods[1], SERVICES["echo"], "after-futures", "ok", "blocking", 10.0)
    ledger.record("after-futures", after)
    report.check(
        "a new call does not wait for cancelled futures",
        after.kind == "ok" and after.elapsed < 1.0,
        f"it came back {after.kind} {after.code} after {after.elapsed:.3f}s (timeout 10 s)",
    )
    for channel in channels:
        channel.close()


async def _cancel_tasks(
    report: Report, ledger: Ledger, server: FaultServer, backend: Backend, count: int, adapting: bool
) -> list[str]:
    baseline = asyncio.all_tasks()
    bucket = backend.sync_bucket() if backend.kind == "local" else backend.aio_bucket()
    interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket, retry=FAST_RETRY, throttle=ECHO_POLICY)
    echo = SERVICES["echo"]
    async with grpc.aio.insecure_channel(server.target, interceptors=[interceptor]) as channel:
        method = channel.unary_unary(echo.method, echo.serializer, echo.deserializer)
        if adapting:
            ledger.begin("warm-aio", "throttle=1")
            ledger.record("warm-aio", await call_aio(method, echo, "warm-aio", "throttle=1", 10.0))

        async def call(call_id: str) -> Any:
            return await method(echo.request(f"{call_id}:ok"), timeout=count / backend.rate + 30)

        tasks = {}
        for k in range(count):
            ledger.begin(f"a{k}", "ok")
            tasks[f"a{k}"] = asyncio.create_task(call(f"a{k}"))
        end = time.monotonic() + 2.0
        shared = True
        while sum(_succeeded(t) for t in tasks.values()) < 2 and time.monotonic() < end:
            shared = shared and getattr(bucket, "shared", True)
            await asyncio.sleep(0.01)
        if backend.kind == "redis":
            report.check(
                "the Redis bucket stayed shared with Redis up",
                shared,
                f"{count} tasks reserving at once; shared throughout: {shared} (last error: "
                f"{bucket._breaker.last_error or 'none'})",
            )
        for task in tasks.values():
            task.cancel()
        done, pending = await asyncio.wait(tasks.values(), timeout=3.0)
        for call_id, task in tasks.items():
            if task not in done:
                continue
            if task.cancelled():
                ledger.record(call_id, Outcome("cancelled", "CANCELLED", 0.0))
            elif task.exception() is not None:
                ledger.record(call_id, Outcome("error", type(task.exception()).__name__, 0.0))
            else:
                ledger.record(call_id, Outcome("ok", "OK", 0.0))
        report.check(
            "every cancelled task ended at once",
            not pending,
            f"{sum(t.cancelled() for t in done)} of {count} cancelled; still pending after 3 s: {len(pending)}",
        )
        await asyncio.sleep(2 / backend.rate)
        level = bucket.available() if backend.kind == "local" else await bucket.available()
        fresh = bucket.reserve(max_wait=5.0) if backend.kind == "local" else await bucket.reserve(max_wait=5.0)
        _tokens_back(report, level, None if fresh is None else fresh.delay, 1.0, backend.rate, "tasks")
        if fresh is not None:
            fresh.cancel()
        await asyncio.sleep(2 / backend.rate)
        ledger.begin("after-tasks", "ok")
        after = await call_aio(method, echo, "after-tasks", "ok", 10.0)
        ledger.record("after-tasks", after)
        report.check(
            "a new call does not wait for cancelled tasks",
            after.kind == "ok" and after.elapsed < 1.0,
            f"it came back {after.kind} {after.code} after {after.elapsed:.3f}s (timeout 10 s)",
        )
    if backend.kind == "redis":
        await bucket.aclose()
    return await leaked_tasks(baseline)


#: name -> (run(scale), needs Redis)
SCENARIOS: dict[str, tuple[Callable[[Scale], list[Check]], bool]] = {
    "server_restart": (server_restart, False),
    "server_stall": (server_stall, False),
    "redis_outage": (redis_outage, True),
    "script_flush": (script_flush, True),
    "short_deadlines": (short_deadlines, False),
    "mass_cancel_local": (mass_cancel, False),
    "mass_cancel_local_adapting": (lambda scale: mass_cancel(scale, "local", adapting=True), False),
    "mass_cancel_redis": (lambda scale: mass_cancel(scale, "redis"), True),
    "malformed": (malformed, False),
}
