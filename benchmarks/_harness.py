"""Shared helpers for the benchmarks: servers in a child process, statistics, tables, JSON.

Not a benchmark itself. Every ``bench_*.py`` script imports it as a top-level
module (the scripts run as ``python benchmarks/bench_x.py``, so this folder is
on ``sys.path``); it also puts the repository root there, so that the test
helpers import as ``tests.scripted`` and ``tests.redis_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# -- statistics ---------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0..100), NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def rotated(items: Sequence[Any], by: int) -> list[Any]:
    """``items`` rotated left by ``by``: each round starts with another variant."""
    if not items:
        return []
    by %= len(items)
    return list(items[by:]) + list(items[:by])


# -- output --------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; floats are shown as given (format them first)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan, math.nan, math.nan)
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in load],
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
    }


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` (plus the machine description) to ``benchmarks/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **data}, indent=2, default=str) + "\n")
    return path


# -- servers in a child process -------------------------------------------------


class ServerProcess:
    """Runs ``serve(conn, *args)`` in a spawned process; ``target`` is the address it sent back.

    ``serve`` must be a module-level function (it is pickled by name), send its
    address over ``conn`` once listening, then block until ``conn`` receives
    anything, and stop. A separate process keeps the server's threads out of
    the client's GIL, so the client is measured alone.
    """

    def __init__(self, serve: Callable[..., None], *args: Any) -> None:
        self._serve = serve
        self._args = args
        self.target = ""
        self._conn: Connection | None = None
        self._process: Any = None

    def __enter__(self) -> ServerProcess:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=self._serve, args=(child, *self._args), daemon=True)
        self._process.start()
        deadline = time.monotonic() + 60
        while not parent.poll(0.1):
            if not self._process.is_alive():
                raise RuntimeError(f"{self._serve.__name__} exited with code {self._process.exitcode}")
            if time.monotonic() > deadline:
                self._process.kill()
                raise RuntimeError(f"{self._serve.__name__} did not start within 60 s")
        self.target = parent.recv()
        self._conn = parent
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send("stop")
        if self._process is not None:
            self._process.join(15)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)


def serve_echo(conn: Connection) -> None:
    """Child process: the sync ``EchoServer`` from ``tests/scripted.py``."""
    from tests.scripted import EchoServer

    with EchoServer() as server:
        conn.send(server.target)
        conn.recv()


def serve_aio_echo(conn: Connection) -> None:
    """Child process: the ``grpc.aio`` ``AioEchoServer`` from ``tests/scripted.py``."""
    from tests.scripted import AioEchoServer

    async def main() -> None:
        async with AioEchoServer() as server:
            conn.send(server.target)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    asyncio.run(main())


def serve_emulator(
    conn: Connection, rate: float, policy: str, burst: float | None, workers: int, windows: Any = ()
) -> None:
    """Child process: a ``ClarifaiEmulator``; the parent reads it through ``ControlClient``."""
    from grpc_throttle.testing import ClarifaiEmulator

    with ClarifaiEmulator(rate=rate, policy=policy, burst=burst, max_workers=workers, windows=windows) as emulator:
        conn.send(emulator.target)
        conn.recv()


def clarifai_stubs() -> tuple[Any, Any]:
    """``(service_pb2, service_pb2_grpc)``, ready for ``V2Stub(channel)``.

    clarifai-grpc finishes setting up its stub module only when a
    ``ClarifaiChannel`` was made once in the process; without that,
    ``V2Stub(channel)`` fails with "'NoneType' object is not callable".
    """
    from clarifai_grpc.channel.clarifai_channel import ClarifaiChannel
    from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc

    ClarifaiChannel.get_insecure_grpc_channel(base="127.0.0.1", port=1).close()
    return service_pb2, service_pb2_grpc


# -- a channel that answers at once, to time client-side code alone ------------


class _FinishedCall:
    """A finished, successful call, as grpc's interceptor plumbing expects one."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def result(self, timeout: float | None = None) -> Any:
        return self._response

    def exception(self, timeout: float | None = None) -> None:
        return None

    def traceback(self, timeout: float | None = None) -> None:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def code(self) -> Any:
        import grpc

        return grpc.StatusCode.OK

    def details(self) -> str:
        return ""

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def done(self) -> bool:
        return True

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


class _InstantUnaryUnary:
    def __init__(self, response: Any) -> None:
        self._response = response

    def __call__(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._response

    def with_call(self, request: Any, timeout: float | None = None, **kwargs: Any) -> tuple[Any, Any]:
        return self._response, _FinishedCall(self._response)

    def future(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return _FinishedCall(self._response)


def instant_channel(response: Any) -> Any:
    """A ``grpc.Channel`` whose unary calls return ``response`` at once, with no I/O."""
    import grpc

    class InstantChannel(grpc.Channel):  # type: ignore[misc]
        def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
            return _InstantUnaryUnary(response)

        # Stubs make all four kinds; only unary-unary is ever called.
        unary_stream = stream_unary = stream_stream = unary_unary

        def subscribe(self, *args: Any, **kwargs: Any) -> None:
            return None

        unsubscribe = subscribe

        def close(self) -> None:
            return None

    return InstantChannel()


def instant_aio_channel(response: Any) -> Any:
    """A ``grpc.aio.Channel`` whose unary calls are done at once with ``response``, with no I/O."""
    import grpc
    import grpc.aio

    class InstantCall:
        def __init__(self) -> None:
            self._callbacks: list[Any] = []

        def __await__(self) -> Any:
            return response
            yield  # a generator: awaiting it returns at once

        async def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.OK

        async def trailing_metadata(self) -> Any:
            return grpc.aio.Metadata()

        def add_done_callback(self, callback: Any) -> None:
            self._callbacks.append(callback)

        def cancel(self) -> bool:
            return False

        def done(self) -> bool:
            return True

    class InstantMultiCallable:
        def __call__(self, request: Any, **kwargs: Any) -> Any:
            return InstantCall()

    class InstantAioChannel(grpc.aio.Channel):  # type: ignore[misc]
        def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
            return InstantMultiCallable()

        unary_stream = stream_unary = stream_stream = unary_unary

        async def close(self, grace: float | None = None) -> None:
            return None

        def get_state(self, try_to_connect: bool = False) -> Any:
            return grpc.ChannelConnectivity.READY

        async def wait_for_state_change(self, last_observed_state: Any) -> None:
            return None

        async def channel_ready(self) -> None:
            return None

        async def __aenter__(self) -> Any:
            return self

        async def __aexit__(self, *exc_info: Any) -> None:
            return None

    return InstantAioChannel()
