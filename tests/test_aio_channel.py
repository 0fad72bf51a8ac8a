"""What only the aio fast path, ``grpc_throttle.aio.ThrottledChannel``, has to promise.

The behaviour it shares with grpc.aio's interceptors is pinned by the suites
parametrised over tests.drivers.AIO_DRIVERS and by tests/test_interop.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest

import grpc_throttle.aio
import grpc_throttle.client.aio
from grpc_throttle import RetryPolicy, RetryScheduled, ThrottlePolicy, TokenBucket
from grpc_throttle.testing import echo_pb2_grpc
from tests.scripted import ECHO_POLICY, FAST_RETRY, AioEchoServer, request


@pytest.fixture
def server(aio_echo_server: AioEchoServer) -> AioEchoServer:
    return aio_echo_server


def wrap(server: AioEchoServer, bucket: TokenBucket) -> tuple[Any, grpc_throttle.aio.ThrottledChannel]:
    interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket, retry=FAST_RETRY, throttle=ECHO_POLICY)
    channel = grpc_throttle.aio.ThrottledChannel(grpc.aio.insecure_channel(server.target), interceptor)
    return echo_pb2_grpc.EchoStub(channel), channel


async def test_refuses_what_is_not_an_aio_channel_or_interceptor() -> None:
    interceptor = grpc_throttle.aio.ThrottlingInterceptor(TokenBucket(rate=1))
    with pytest.raises(ValueError, match=r"channel must be a grpc\.aio\.Channel"):
        grpc_throttle.aio.ThrottledChannel(grpc.insecure_channel("127.0.0.1:1"), interceptor)  # type: ignore[arg-type]
    async with grpc.aio.insecure_channel("127.0.0.1:1") as inner:
        sync_interceptor = grpc_throttle.ThrottlingInterceptor(TokenBucket(rate=1))
        with pytest.raises(ValueError, match=r"interceptor must be a grpc_throttle\.aio\.ThrottlingInterceptor"):
            grpc_throttle.aio.ThrottledChannel(inner, sync_interceptor)  # type: ignore[arg-type]


async def test_multicallables_are_grpc_aio_kinds(server: AioEchoServer) -> None:
    stub, channel = wrap(server, TokenBucket(rate=100))
    async with channel:
        assert isinstance(stub.Unary, grpc.aio.UnaryUnaryMultiCallable)
        assert isinstance(stub.ServerStream, grpc.aio.UnaryStreamMultiCallable)
        assert isinstance(stub.ClientStream, grpc.aio.StreamUnaryMultiCallable)
        assert isinstance(stub.BidiStream, grpc.aio.StreamStreamMultiCallable)
        assert isinstance(channel, grpc.aio.Channel)


async def test_with_a_token_there_a_stream_is_grpcs_own_call(server: AioEchoServer) -> None:
    stub, channel = wrap(server, TokenBucket(rate=100))
    async with channel:
        call = stub.ServerStream(request("a:ok"))
        assert type(call).__module__.startswith("grpc.aio")
        assert [r async for r in call]


async def test_close_ends_waiting_calls_at_once_and_gives_their_tokens_back(server: AioEchoServer) -> None:
    bucket = TokenBucket(rate=1)
    stub, channel = wrap(server, bucket)
    assert bucket.try_acquire()
    unary = stub.Unary(request("u:ok"))
    stream = stub.ServerStream(request("s:ok"))
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await channel.close()
    assert await unary.code() == grpc.StatusCode.CANCELLED
    assert await stream.code() == grpc.StatusCode.CANCELLED
    assert loop.time() - started < 0.5  # not the 1-2 s the waits had left
    with pytest.raises(asyncio.CancelledError):
        await unary
    assert sum(server.script.attempts.values()) == 0
    assert bucket.available() == pytest.approx(0.0, abs=0.2)  # the two slots came back; the first token is spent


async def test_a_call_on_a_closed_channel_fails_at_once_and_takes_no_token(server: AioEchoServer) -> None:
    bucket = TokenBucket(rate=1)
    stub, channel = wrap(server, bucket)
    await channel.close()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Unary(request("a:ok"))
    assert raised.value.code() == grpc.StatusCode.CANCELLED
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in stub.ServerStream(request("b:ok")):
            pass
    assert bucket.available() == pytest.approx(1.0)
    assert sum(server.script.attempts.values()) == 0


async def test_a_waiting_call_nobody_awaits_is_still_sent_and_its_callbacks_run(server: AioEchoServer) -> None:
    bucket = TokenBucket(rate=20)
    stub, channel = wrap(server, bucket)
    async with channel:
        assert bucket.try_acquire()
        done = asyncio.Event()
        seen: list[Any] = []
        call = stub.Unary(request("a:ok"))
        call.add_done_callback(lambda c: (seen.append(c), done.set()))
        await asyncio.wait_for(done.wait(), 5)
        assert seen == [call]
        assert call.done()
        assert server.script.attempts["a"] == 1
        assert (await call).text


async def test_an_unawaited_throttled_first_attempt_is_still_retried(server: AioEchoServer) -> None:
    stub, channel = wrap(server, TokenBucket(rate=100))
    async with channel:
        call = stub.Unary(request("a:throttle=2"))
        done = asyncio.Event()
        call.add_done_callback(lambda _c: done.set())
        await asyncio.wait_for(done.wait(), 5)
        assert server.script.attempts["a"] == 3
        assert await call.code() == grpc.StatusCode.OK


async def test_cancel_during_a_backoff_ends_the_call_cancelled(server: AioEchoServer) -> None:
    slow_retry = RetryPolicy(max_attempts=5, initial_backoff=5, max_backoff=5)
    backing_off = asyncio.Event()
    interceptor = grpc_throttle.aio.ThrottlingInterceptor(
        TokenBucket(rate=100), retry=slow_retry, throttle=ECHO_POLICY, on_event=on_retry(backing_off)
    )
    async with grpc_throttle.aio.ThrottledChannel(grpc.aio.insecure_channel(server.target), interceptor) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        call = stub.Unary(request("a:throttle=1"))
        waiter = asyncio.ensure_future(call)
        await asyncio.wait_for(backing_off.wait(), 10)  # the throttled answer is back: now in its 5 s back-off
        assert call.cancel()
        assert call.cancelled()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiter, 2)
        assert await call.code() == grpc.StatusCode.CANCELLED
        assert server.script.attempts["a"] == 1
        assert interceptor.stats().cancelled == 1


def on_retry(event: asyncio.Event) -> Any:
    """An on_event hook that sets ``event`` when a back-off is scheduled."""

    def hook(happened: Any) -> None:
        if isinstance(happened, RetryScheduled):
            event.set()

    return hook


async def test_client_aio_builders_take_the_fast_path(server: AioEchoServer) -> None:
    channel = grpc_throttle.client.aio.throttled_channel(server.target, rate=100)
    async with channel:
        assert isinstance(channel, grpc_throttle.aio.ThrottledChannel)
        stub = echo_pb2_grpc.EchoStub(channel)
        assert (await stub.Unary(request("a:ok"))).text
        assert grpc_throttle.client.aio.interceptor_of(channel).stats().calls == 1


async def test_paces_on_the_asyncio_redis_bucket(server: AioEchoServer, redis_server: Any, bucket_key: str) -> None:
    bucket = grpc_throttle.aio.RedisTokenBucket.from_url(redis_server.url, key=bucket_key, rate=20, capacity=1)
    try:
        interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket, retry=FAST_RETRY, throttle=ECHO_POLICY)
        inner = grpc.aio.insecure_channel(server.target)
        async with grpc_throttle.aio.ThrottledChannel(inner, interceptor) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            loop = asyncio.get_running_loop()
            started = loop.time()
            answers = await asyncio.gather(*(stub.Unary(request(f"c{i}:ok")) for i in range(6)))
            streamed = [r async for r in stub.ServerStream(request("s:ok"))]
            elapsed = loop.time() - started
        assert len(answers) == 6 and streamed
        assert elapsed >= 0.2  # 7 calls at 20/s with a burst of 1: at least 0.3 s, generous bound
        stats = interceptor.stats()
        assert stats.calls == 7 and stats.token_wait_seconds > 0
    finally:
        await bucket.aclose()


async def test_a_waiting_call_awaited_at_once_has_one_driver(server: AioEchoServer) -> None:
    """The wait runs in a task of ours; the caller awaiting before it starts must not start a second plan."""
    bucket = TokenBucket(rate=200, capacity=1)
    throttle = ThrottlePolicy(grpc_codes={grpc.StatusCode.UNAVAILABLE})
    interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket, retry=FAST_RETRY, throttle=throttle, budget=False)
    async with grpc_throttle.aio.ThrottledChannel(grpc.aio.insecure_channel(server.target), interceptor) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for i in range(5):
            bucket.try_acquire()  # empty: the call's first step is a wait
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Unary(request(f"c{i}:abort=UNAVAILABLE"))
        attempts = [server.script.attempts_of(f"c{i}") for i in range(5)]
    assert attempts == [FAST_RETRY.max_attempts] * 5  # before: 6 at times, a second driver's attempt
    assert interceptor.stats().attempts == 5 * FAST_RETRY.max_attempts


async def test_close_during_a_backoff_ends_the_call_and_sends_nothing_more(server: AioEchoServer) -> None:
    slow_retry = RetryPolicy(max_attempts=5, initial_backoff=2, max_backoff=2)
    backing_off = asyncio.Event()
    interceptor = grpc_throttle.aio.ThrottlingInterceptor(
        TokenBucket(rate=100), retry=slow_retry, throttle=ECHO_POLICY, on_event=on_retry(backing_off)
    )
    channel = grpc_throttle.aio.ThrottledChannel(grpc.aio.insecure_channel(server.target), interceptor)
    stub = echo_pb2_grpc.EchoStub(channel)
    call = stub.Unary(request("a:throttle=1"))
    waiter = asyncio.ensure_future(call)
    await asyncio.wait_for(backing_off.wait(), 10)  # now in its 2 s back-off
    loop = asyncio.get_running_loop()
    started = loop.time()
    await channel.close()
    with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
        await asyncio.wait_for(waiter, 1.5)
    assert loop.time() - started < 1.5
    assert await call.code() == grpc.StatusCode.CANCELLED
    await asyncio.sleep(0.1)
    assert server.script.attempts["a"] == 1
