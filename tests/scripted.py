"""Real gRPC echo servers whose answers are scripted per request.

The request text is ``"<call id>:<command>"``; the server counts attempts per
call id, so one logical call retried by the interceptor is seen as attempts
1, 2, 3... Commands:

- ``ok``                 answer at once
- ``throttle=N``         answer "slow down" (outcome.state 429) to the first N attempts
- ``throttle-always``    answer "slow down" to every attempt
- ``abort=CODE``         fail every attempt with grpc status CODE
- ``abort=CODE*N``       fail the first N attempts with CODE, then answer
- ``sleep=S``            answer after S seconds
- ``pushback=MS*N``      first N attempts fail RESOURCE_EXHAUSTED with the
                         ``grpc-retry-pushback-ms`` trailer set to MS
- ``retryinfo=MS*N``     first N attempts fail RESOURCE_EXHAUSTED with a
                         ``google.rpc.RetryInfo`` of MS milliseconds in the status details
- ``slowpush=MS*N``      first N attempts answer "slow down" in an OK body with the
                         ``grpc-retry-pushback-ms`` trailer set to MS
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc

from grpc_throttle import RetryPolicy, ThrottlePolicy
from grpc_throttle.testing import echo_pb2, echo_pb2_grpc

SLOW_DOWN = 429

#: The classification the echo service needs: its status lives elsewhere.
ECHO_POLICY = ThrottlePolicy(response_predicate=lambda r: r.outcome.state == SLOW_DOWN)

#: Retries quick enough for tests: 5 attempts, 10-20 ms apart.
FAST_RETRY = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.02)


def request(text: str) -> echo_pb2.EchoRequest:
    """An echo request; ``text`` is ``"<call id>:<command>"`` (see above)."""
    return echo_pb2.EchoRequest(text=text)


class Script:
    """Shared bookkeeping: what each call id has seen so far."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: collections.Counter[str] = collections.Counter()
        #: (monotonic time, call id, attempt, metadata dict) per request received.
        self.log: list[tuple[float, str, int, dict[str, str]]] = []
        #: The deadline each request arrived with (seconds left, None = none).
        self.time_left: dict[tuple[str, int], float | None] = {}
        #: Requests the server answered successfully (not throttled, not failed).
        self.executed: collections.Counter[str] = collections.Counter()

    def arrivals(self) -> list[float]:
        with self.lock:
            return [entry[0] for entry in self.log]

    def metadata_of(self, call_id: str) -> list[dict[str, str]]:
        with self.lock:
            return [entry[3] for entry in self.log if entry[1] == call_id]

    def attempts_of(self, call_id: str) -> int:
        with self.lock:
            return self.attempts[call_id]

    def decide(self, text: str, context: Any) -> tuple[str, Any, int]:
        """Returns (action, argument, attempt): action is ok/throttle/abort/sleep/pushback."""
        call_id, _, command = text.partition(":")
        md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        left = context.time_remaining()
        with self.lock:
            self.attempts[call_id] += 1
            attempt = self.attempts[call_id]
            self.log.append((time.monotonic(), call_id, attempt, md))
            self.time_left[(call_id, attempt)] = left if left is not None and left < 1e6 else None
        name, _, arg = command.partition("=")
        if name == "throttle-always":
            return "throttle", None, attempt
        if name == "throttle":
            return ("throttle" if attempt <= int(arg) else "ok"), None, attempt
        if name == "abort":
            code, _, times = arg.partition("*")
            if not times or attempt <= int(times):
                return "abort", getattr(grpc.StatusCode, code), attempt
            return "ok", None, attempt
        if name == "sleep":
            return "sleep", float(arg), attempt
        if name in ("pushback", "retryinfo", "slowpush"):
            ms, _, times = arg.partition("*")
            if attempt <= int(times):
                return name, ms, attempt
        return "ok", None, attempt

    def answer(self, text: str, attempt: int, throttled: bool) -> echo_pb2.EchoResponse:
        if throttled:
            return echo_pb2.EchoResponse(
                text=text, attempt=attempt, outcome=echo_pb2.Outcome(state=SLOW_DOWN, reason="slow down")
            )
        with self.lock:
            self.executed[text.partition(":")[0]] += 1
        return echo_pb2.EchoResponse(text=text, attempt=attempt)


def retry_info_status(millis: int) -> Any:
    """A RESOURCE_EXHAUSTED status carrying google.rpc.RetryInfo, as Google APIs send it."""
    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2
    from grpc_status import rpc_status

    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=millis * 1_000_000)))
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="scripted RetryInfo", details=[detail])
    return rpc_status.to_status(status)


class _SyncEcho(echo_pb2_grpc.EchoServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def Unary(self, request: Any, context: grpc.ServicerContext) -> Any:
        action, arg, attempt = self.script.decide(request.text, context)
        if action == "abort":
            context.abort(arg, f"scripted {arg.name}")
        if action == "pushback":
            context.set_trailing_metadata((("grpc-retry-pushback-ms", arg),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "scripted pushback")
        if action == "retryinfo":
            context.abort_with_status(retry_info_status(int(arg)))
        if action == "sleep":
            time.sleep(arg)
        if action == "slowpush":  # a throttled OK answer whose trailer says how long to wait
            context.set_trailing_metadata((("grpc-retry-pushback-ms", arg),))
        return self.script.answer(request.text, attempt, action in ("throttle", "slowpush"))

    def ServerStream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        _, _, attempt = self.script.decide(request.text, context)
        for _ in range(max(request.repeat, 1)):
            yield self.script.answer(request.text, attempt, False)

    def ClientStream(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        texts = [r.text for r in request_iterator]
        _, _, attempt = self.script.decide(texts[0] if texts else "empty:ok", context)
        return self.script.answer("|".join(texts), attempt, False)

    def BidiStream(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        for request in request_iterator:
            _, _, attempt = self.script.decide(request.text, context)
            yield self.script.answer(request.text, attempt, False)


class EchoServer:
    """A real sync grpc server on a free loopback port."""

    def __init__(self) -> None:
        self.script = Script()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        echo_pb2_grpc.add_EchoServicer_to_server(_SyncEcho(self.script), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"

    def __enter__(self) -> EchoServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(None).wait()


class _AioEcho(echo_pb2_grpc.EchoServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def Unary(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        action, arg, attempt = self.script.decide(request.text, context)
        if action == "abort":
            await context.abort(arg, f"scripted {arg.name}")
        if action == "pushback":
            context.set_trailing_metadata((("grpc-retry-pushback-ms", arg),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "scripted pushback")
        if action == "retryinfo":
            status = retry_info_status(int(arg))
            await context.abort(status.code, status.details, status.trailing_metadata)
        if action == "sleep":
            await asyncio.sleep(arg)
        return self.script.answer(request.text, attempt, action == "throttle")

    async def ServerStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
        _, _, attempt = self.script.decide(request.text, context)
        for _ in range(max(request.repeat, 1)):
            yield self.script.answer(request.text, attempt, False)

    async def ClientStream(self, request_iterator: AsyncIterator[Any], context: Any) -> Any:
        texts = [r.text async for r in request_iterator]
        _, _, attempt = self.script.decide(texts[0] if texts else "empty:ok", context)
        return self.script.answer("|".join(texts), attempt, False)

    async def BidiStream(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in request_iterator:
            _, _, attempt = self.script.decide(request.text, context)
            yield self.script.answer(request.text, attempt, False)


class AioEchoServer:
    """A real grpc.aio server on a free loopback port, in the test's loop."""

    def __init__(self) -> None:
        self.script = Script()
        self.server = grpc.aio.server()
        echo_pb2_grpc.add_EchoServicer_to_server(_AioEcho(self.script), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> AioEchoServer:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(None)
