"""``grpc-throttle demo``: Clarifai's documented retry recipe against the interceptor.

Two parts, each run as users of their own on the embedded emulator (so their
quotas never interact):

* **A batch above the quota.** The same ``ListModelTypes`` calls from several
  threads, first on a bare channel with the recipe from Clarifai's docs (on
  status 11005, sleep, then retry), then through grpc-throttle.
* **Bursty traffic below the quota.** Bursts of two thirds of the quota at
  once every 1.25 s, on a bare channel and through grpc-throttle at the same
  time: nothing throttles the bare channel, so any latency grpc-throttle adds
  is its own.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import grpc

__all__ = ["DemoConfig", "RunResult", "format_table", "run_demo"]

_SUCCESS = 10000
_CONN_THROTTLED = 11005
#: Width of the progress bar, in characters.
_BAR = 30


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What the demo runs; the command line fills it in (already validated)."""

    #: Calls per run.
    calls: int = 150
    #: Client threads per run.
    threads: int = 8
    #: The emulated quota, and the rate the interceptor is told, in requests/s.
    rate: float = 15.0
    #: The emulator's quota policy.
    policy: str = "token-bucket"
    #: The emulator's token-bucket size; None means one second's worth.
    burst: float | None = None
    #: The recipe's sleep after a throttled answer (Clarifai documents 15 s).
    recipe_wait: float = 1.0
    #: The longest a call may take, retries included, before it counts as lost.
    call_timeout: float = 30.0
    #: Bursts in the bursty part (0 skips it).
    bursts: int = 12
    #: Seconds from one burst to the next.
    burst_every: float = 1.25

    @property
    def burst_calls(self) -> int:
        """Calls per burst in the bursty part: two thirds of the quota (10 at 15/s)."""
        return max(1, math.floor(self.rate * 2 / 3))

    @property
    def server_burst(self) -> float:
        """Calls the emulator admits at once before its rate applies."""
        if self.policy == "token-bucket":
            return max(1.0, self.rate) if self.burst is None else self.burst
        return float(math.floor(self.rate))

    @property
    def ideal_wall(self) -> float:
        """The shortest possible run: the server's burst, then ``rate`` per second."""
        return max(self.calls - self.server_burst, 0.0) / self.rate


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunResult:
    """What one run did, as the client and the server saw it."""

    #: Column title.
    name: str
    #: Calls made.
    calls: int
    #: Calls that ended with status SUCCESS.
    succeeded: int
    #: Throttled answers the server sent (its own counters).
    throttled: int
    #: Attempts that repeated a throttled call.
    retries: int
    #: Seconds from the first call to the last answer.
    wall: float
    #: Seconds each call took, retries and waits included, in completion order.
    latencies: tuple[float, ...]
    #: When the server admitted each call, in seconds since the run started.
    admitted_at: tuple[float, ...]
    #: When the client got each throttled answer (recipe run only), same clock.
    throttled_at: tuple[float, ...] = ()
    #: (seconds since the run started, new rate) for each change of the
    #: bucket's effective rate (interceptor run only).
    rate_changes: tuple[tuple[float, float], ...] = ()

    @property
    def lost(self) -> int:
        """Calls that did not succeed (errors, or given up)."""
        return self.calls - self.succeeded

    @property
    def achieved_rate(self) -> float:
        """Successful calls per second of wall time."""
        return self.succeeded / self.wall if self.wall > 0 else 0.0

    def latency(self, quantile: float) -> float:
        """The latency below which ``quantile`` of the calls fall (nearest rank)."""
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, max(0, math.ceil(quantile * len(ordered)) - 1))]


def run_demo(config: DemoConfig, *, out: TextIO, err: TextIO) -> list[RunResult]:
    """Start the emulator, make both runs, print the table to ``out``; return the runs."""
    from clarifai_grpc.channel.clarifai_channel import ClarifaiChannel
    from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc

    from .. import client
    from ..testing import ClarifaiEmulator, user_key

    request = service_pb2.ListModelTypesRequest()
    tag = secrets.token_hex(4)  # fresh users, whatever ran before in this process
    recipe_pat, our_pat = f"demo-recipe-{tag}", f"demo-pat-{tag}"
    workers = max(16, 2 * config.threads)
    emulator = ClarifaiEmulator(rate=config.rate, policy=config.policy, burst=config.burst, max_workers=workers)
    with emulator:
        print(_header(config), file=out, flush=True)

        # (a) A bare channel, as in Clarifai's docs, with their retry recipe.
        channel = ClarifaiChannel.get_insecure_grpc_channel(base=emulator.host, port=emulator.port)
        with channel:
            stub = service_pb2_grpc.V2Stub(channel)
            recipe = _Recipe(stub.ListModelTypes, request, recipe_pat, config)
            batch = _Batch("documented recipe", config, err, recipe.call)
            batch.run()
        runs = [_result(batch, emulator, user_key(f"Key {recipe_pat}"), recipe.retries, recipe.throttled_at)]
        emulator.reset()

        # (b) The same calls through grpc-throttle.
        channel = client.clarifai_insecure_channel(emulator.target, our_pat, rate=config.rate)
        with channel:
            stub = service_pb2_grpc.V2Stub(channel)

            def ours() -> bool:
                reply = stub.ListModelTypes(request, timeout=config.call_timeout)
                return bool(reply.status.code == _SUCCESS)

            batch = _Batch("grpc-throttle", config, err, ours)
            interceptor = client.interceptor_of(channel)
            changes: list[tuple[float, float]] = []

            def on_rate(event: Any) -> None:
                changes.append((time.monotonic(), event.new_rate))

            interceptor.bucket.add_listener(on_rate)
            batch.run()
            retries = interceptor.stats().retries
            interceptor.bucket.remove_listener(on_rate)
        runs.append(_result(batch, emulator, user_key(f"Key {our_pat}"), retries, [], changes))
        print(format_table(runs, config), file=out, flush=True)
        if config.bursts:
            emulator.reset()
            bursty = _bursty(emulator, config, tag, request, service_pb2_grpc)
            print(_bursty_header(config), file=out)
            print(format_bursty_table(bursty), file=out, flush=True)
            runs += bursty
    return runs


def format_table(runs: list[RunResult], config: DemoConfig) -> str:
    """The runs side by side, one metric per row."""
    ideal = config.ideal_wall

    def wall(run: RunResult) -> str:
        return f"{run.wall:.1f} s" + (f" ({run.wall / ideal:.2f}x)" if ideal > 0 else "")

    rows: list[tuple[str, Callable[[RunResult], str]]] = [
        ("calls", lambda r: str(r.calls)),
        ("succeeded", lambda r: str(r.succeeded)),
        ("lost", lambda r: str(r.lost)),
        ("throttled answers (server)", lambda r: str(r.throttled)),
        ("retries", lambda r: str(r.retries)),
        ("wall time (vs ideal)", wall),
        ("ideal wall time", lambda r: f"{ideal:.1f} s"),
        ("achieved rate", lambda r: f"{r.achieved_rate:.1f} req/s"),
        ("latency p50", lambda r: f"{r.latency(0.50):.2f} s"),
        ("latency p99", lambda r: f"{r.latency(0.99):.2f} s"),
    ]
    return _side_by_side(runs, rows)


def format_bursty_table(runs: list[RunResult]) -> str:
    """The bursty runs side by side: what the calls waited, and what the server refused."""
    rows: list[tuple[str, Callable[[RunResult], str]]] = [
        ("calls", lambda r: str(r.calls)),
        ("succeeded", lambda r: str(r.succeeded)),
        ("throttled answers (server)", lambda r: str(r.throttled)),
        ("latency p50", lambda r: f"{r.latency(0.50) * 1e3:.1f} ms"),
        ("latency p90", lambda r: f"{r.latency(0.90) * 1e3:.1f} ms"),
        ("latency p99", lambda r: f"{r.latency(0.99) * 1e3:.1f} ms"),
    ]
    return _side_by_side(runs, rows)


def _side_by_side(runs: list[RunResult], rows: list[tuple[str, Callable[[RunResult], str]]]) -> str:
    """One column per run, one row per ``(label, cell)``."""
    width = max(20, *(len(r.name) + 2 for r in runs))
    lines = ["", f"{'':<28}" + "".join(f"{r.name:>{width}}" for r in runs)]
    lines += [f"{label:<28}" + "".join(f"{show(r):>{width}}" for r in runs) for label, show in rows]
    return "\n".join(lines)


def _bursty_header(config: DemoConfig) -> str:
    return "\n".join(
        [
            "",
            f"Bursty traffic below the quota: {config.bursts} bursts of {config.burst_calls} calls at once, "
            f"one every {config.burst_every:g} s,",
            "on a bare channel and through grpc-throttle at the same time, each as its own user. Nothing",
            "throttles the bare channel: what grpc-throttle adds to its latency is the cost of pacing.",
        ]
    )


def _bursty(emulator: Any, config: DemoConfig, tag: str, request: Any, grpc_module: Any) -> list[RunResult]:
    """Both bursty runs at once; each burst's calls of the two clients are interleaved."""
    from clarifai_grpc.channel.clarifai_channel import ClarifaiChannel

    from .. import client
    from ..testing import user_key

    bare_pat, our_pat = f"demo-bare-{tag}", f"demo-bursty-{tag}"
    bare_channel = ClarifaiChannel.get_insecure_grpc_channel(base=emulator.host, port=emulator.port)
    our_channel = client.clarifai_insecure_channel(emulator.target, our_pat, rate=config.rate)
    bare_stub, our_stub = grpc_module.V2Stub(bare_channel), grpc_module.V2Stub(our_channel)
    bare_metadata = (("authorization", f"Key {bare_pat}"),)
    names = ("bare channel", "grpc-throttle")
    latencies: dict[str, list[float]] = {name: [] for name in names}
    succeeded = dict.fromkeys(names, 0)
    lock = threading.Lock()

    def call(name: str) -> None:
        started = time.monotonic()
        try:
            if name == "bare channel":
                reply = bare_stub.ListModelTypes(request, metadata=bare_metadata, timeout=config.call_timeout)
            else:
                reply = our_stub.ListModelTypes(request, timeout=config.call_timeout)
            ok = reply.status.code == _SUCCESS
        except grpc.RpcError:
            ok = False
        elapsed = time.monotonic() - started
        with lock:
            latencies[name].append(elapsed)
            succeeded[name] += ok

    size = config.burst_calls
    with bare_channel, our_channel, concurrent.futures.ThreadPoolExecutor(2 * size) as pool:
        start = time.monotonic()
        pending = []
        for burst in range(config.bursts):
            time.sleep(max(0.0, start + burst * config.burst_every - time.monotonic()))
            for i in range(size):
                order = names if i % 2 == 0 else names[::-1]  # neither client always goes first
                pending += [pool.submit(call, name) for name in order]
        for future in pending:
            future.result()
        wall = time.monotonic() - start
        retries = client.interceptor_of(our_channel).stats().retries
    per_user = emulator.counters().per_user
    runs = []
    for name, pat in zip(names, (bare_pat, our_pat), strict=True):
        user = user_key(f"Key {pat}")
        runs.append(
            RunResult(
                name=f"{name} (bursty)",
                calls=size * config.bursts,
                succeeded=succeeded[name],
                throttled=per_user.get(user, (0, 0))[1],
                retries=retries if name == "grpc-throttle" else 0,
                wall=wall,
                latencies=tuple(latencies[name]),
                admitted_at=tuple(t - start for t in emulator.admission_times(user)),
            )
        )
    return runs


def _header(config: DemoConfig) -> str:
    burst = f", burst {config.server_burst:g}" if config.policy == "token-bucket" else ""
    wait = f"{config.recipe_wait:g} s"
    note = "" if config.recipe_wait >= 15 else f"; this demo sleeps {wait} (--recipe-wait) so that it ends in time"
    return "\n".join(
        [
            f"Emulated Clarifai quota: {config.rate:g} req/s per user ({config.policy}{burst}).",
            f"Each run: {config.calls} ListModelTypes calls from {config.threads} threads, as its own user.",
            f"Run 1, documented recipe: on status 11005 sleep, then retry. Clarifai says 15 s{note}.",
            f"Run 2, grpc-throttle: clarifai_insecure_channel(target, pat, rate={config.rate:g}), default retries.",
        ]
    )


def _result(
    batch: _Batch,
    emulator: Any,
    user: str,
    retries: int,
    throttled_at: list[float],
    rate_changes: list[tuple[float, float]] | None = None,
) -> RunResult:
    _, throttled = emulator.counters().per_user.get(user, (0, 0))
    start = batch.start
    return RunResult(
        name=batch.name,
        calls=batch.calls,
        succeeded=batch.succeeded,
        throttled=throttled,
        retries=retries,
        wall=batch.wall,
        latencies=tuple(batch.latencies),
        admitted_at=tuple(t - start for t in emulator.admission_times(user)),
        throttled_at=tuple(t - start for t in throttled_at),
        rate_changes=tuple((t - start, rate) for t, rate in rate_changes or ()),
    )


class _Recipe:
    """Clarifai's documented loop: call; on 11005 sleep ``recipe_wait``, retry."""

    def __init__(self, method: Any, request: Any, pat: str, config: DemoConfig) -> None:
        self._method = method
        self._request = request
        self._metadata = (("authorization", f"Key {pat}"),)
        self._config = config
        self._lock = threading.Lock()
        #: Retries made, all calls together.
        self.retries = 0
        #: When each throttled answer arrived (monotonic clock).
        self.throttled_at: list[float] = []

    def call(self) -> bool:
        config = self._config
        started = time.monotonic()
        while True:
            try:
                reply = self._method(self._request, metadata=self._metadata, timeout=config.call_timeout)
            except grpc.RpcError:
                return False
            if reply.status.code != _CONN_THROTTLED:
                return bool(reply.status.code == _SUCCESS)
            now = time.monotonic()
            with self._lock:
                self.throttled_at.append(now)
            if now + config.recipe_wait - started > config.call_timeout:
                return False  # a real script would loop on; the demo must end
            time.sleep(config.recipe_wait)
            with self._lock:
                self.retries += 1


class _Batch:
    """Runs ``calls`` calls from ``threads`` threads, drawing a progress bar."""

    def __init__(self, name: str, config: DemoConfig, err: TextIO, call: Callable[[], bool]) -> None:
        self.name = name
        self.calls = config.calls
        self._threads = config.threads
        self._err = err
        self._call = call
        self._lock = threading.Lock()
        self._next = 0
        self._done = 0
        self._stop = threading.Event()
        self.succeeded = 0
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.start = 0.0
        self.wall = 0.0
        self._return = ""

    def run(self) -> None:
        threads = [threading.Thread(target=self._work, daemon=True) for _ in range(self._threads)]
        live = self._err.isatty()
        self._return = "\r" if live else ""
        self.start = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.1)
                    if live:
                        self._draw(end="")
        except BaseException:
            self._stop.set()  # workers stop taking calls; daemon threads never block exit
            raise
        self.wall = time.monotonic() - self.start
        self._draw(end="\n")
        if self.errors:
            print(f"{self.name}: {len(self.errors)} calls failed: {self.errors[0]}", file=self._err)

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._next >= self.calls:
                    return
                self._next += 1
            started = time.monotonic()
            try:
                ok = self._call()
            except Exception as exc:  # count it lost; the run goes on
                ok = False
                with self._lock:
                    self.errors.append(" ".join(f"{type(exc).__name__}: {exc}".split())[:200])
            elapsed = time.monotonic() - started
            with self._lock:
                self._done += 1
                self.succeeded += ok
                self.latencies.append(elapsed)

    def _draw(self, end: str) -> None:
        with self._lock:
            done = self._done
        filled = _BAR * done // self.calls
        elapsed = time.monotonic() - self.start if not end else self.wall
        bar = "#" * filled + "." * (_BAR - filled)
        line = f"{self._return}{self.name:<18} [{bar}] {done:>5}/{self.calls}  {elapsed:5.1f} s"
        print(line, end=end, file=self._err, flush=True)
