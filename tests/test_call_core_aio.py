"""The one call core through the grpc.aio driver, against a real aio server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

import grpc_throttle.aio
from grpc_throttle import TokenBucket
from grpc_throttle.testing import echo_pb2_grpc
from tests.drivers import AIO_DRIVERS
from tests.scripted import ECHO_POLICY, FAST_RETRY, AioEchoServer, request


@pytest.fixture
def server(aio_echo_server: AioEchoServer) -> AioEchoServer:
    return aio_echo_server


@pytest.fixture(params=list(AIO_DRIVERS))
async def make_stub(server: AioEchoServer, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    channels: list[grpc.aio.Channel] = []

    def make(bucket: TokenBucket | None = None, **kwargs: Any) -> tuple[Any, grpc_throttle.aio.ThrottlingInterceptor]:
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("throttle", ECHO_POLICY)
        interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket or TokenBucket(rate=1000), **kwargs)
        channel = AIO_DRIVERS[request.param](server.target, interceptor)
        channels.append(channel)
        return echo_pb2_grpc.EchoStub(channel), interceptor

    yield make
    for channel in channels:
        await channel.close()


@pytest.mark.parametrize("timeout", [0, -1])
async def test_unary_past_its_deadline_is_never_sent(make_stub: Any, server: AioEchoServer, timeout: float) -> None:
    bucket = TokenBucket(rate=1)
    stub, interceptor = make_stub(bucket)
    for i in range(30):  # before: 28 of 30 such calls ran on the server
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Unary(request(f"a{i}:ok"), timeout=timeout)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert sum(server.script.attempts.values()) == 0
    assert bucket.available() == pytest.approx(1.0)
    stats = interceptor.stats()
    assert (stats.calls, stats.attempts, stats.deadline_rejections) == (30, 0, 30)


@pytest.mark.parametrize("kind", ["server", "client", "bidi"])
async def test_stream_past_its_deadline_is_never_sent(make_stub: Any, server: AioEchoServer, kind: str) -> None:
    bucket = TokenBucket(rate=1)
    stub, _ = make_stub(bucket)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        if kind == "server":
            async for _ in stub.ServerStream(request("a:ok"), timeout=0):
                pass
        elif kind == "client":
            await stub.ClientStream(iter([request("a:ok")]), timeout=0)
        else:
            async for _ in stub.BidiStream(iter([request("a:ok")]), timeout=-1):
                pass
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert sum(server.script.attempts.values()) == 0
    assert bucket.available() == pytest.approx(1.0)


async def test_cancelling_a_waiting_call_is_counted_and_gives_the_token_back(make_stub: Any) -> None:
    bucket = TokenBucket(rate=1)
    stub, interceptor = make_stub(bucket)
    assert bucket.try_acquire()
    task = asyncio.ensure_future(stub.Unary(request("a:ok")))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert interceptor.stats().cancelled == 1  # before: always 0
    assert bucket.available() > -0.5  # the waiter's slot is back


async def test_interceptor_metadata_is_on_every_attempt(make_stub: Any, server: AioEchoServer) -> None:
    stub, _ = make_stub(metadata=[("x-key", "secret")])
    await stub.Unary(request("a:throttle=2"), metadata=(("x-team", "mine"),))
    seen = server.script.metadata_of("a")
    assert len(seen) == 3 and all(md.get("x-key") == "secret" and md.get("x-team") == "mine" for md in seen)


async def test_a_cost_function_answering_nonsense_fails_naming_cost(make_stub: Any) -> None:
    stub, _ = make_stub(cost=lambda method, req: None)
    with pytest.raises(ValueError, match="cost"):
        await stub.Unary(request("a:ok"))
