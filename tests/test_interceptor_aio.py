"""The aio interceptor against real grpc.aio servers over loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

import grpc_throttle.aio
from grpc_throttle import RetryPolicy, ThrottlePolicy, ThrottlingInterceptor, TokenBucket
from grpc_throttle.testing import echo_pb2, echo_pb2_grpc
from tests.arrivals import most_in_any_window
from tests.drivers import AIO_DRIVERS
from tests.scripted import ECHO_POLICY, FAST_RETRY, SLOW_DOWN, AioEchoServer, EchoServer, request


@pytest.fixture
def server(aio_echo_server: AioEchoServer) -> AioEchoServer:
    return aio_echo_server


@pytest.fixture(params=list(AIO_DRIVERS))
async def make_stub(server: AioEchoServer, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    channels: list[grpc.aio.Channel] = []

    def make(
        bucket: TokenBucket | None = None,
        retry: RetryPolicy = FAST_RETRY,
        throttle: ThrottlePolicy = ECHO_POLICY,
        **kwargs: Any,
    ) -> tuple[echo_pb2_grpc.EchoStub, grpc_throttle.aio.ThrottlingInterceptor]:
        interceptor = grpc_throttle.aio.ThrottlingInterceptor(
            bucket or TokenBucket(rate=1000), retry=retry, throttle=throttle, **kwargs
        )
        channel = AIO_DRIVERS[request.param](server.target, interceptor)
        channels.append(channel)
        return echo_pb2_grpc.EchoStub(channel), interceptor

    yield make
    for channel in channels:
        await channel.close()


async def test_throttled_call_is_retried_until_answered(make_stub: Any, server: AioEchoServer) -> None:
    stub, interceptor = make_stub()
    response = await stub.Unary(request("a:throttle=2"))
    assert response.attempt == 3
    assert server.script.attempts_of("a") == 3
    stats = interceptor.stats()
    assert (stats.calls, stats.attempts, stats.throttled, stats.retries) == (1, 3, 2, 2)


async def test_the_call_object_reports_the_last_attempt(make_stub: Any) -> None:
    stub, _ = make_stub()
    call = stub.Unary(request("a:throttle=1"))
    assert (await call).attempt == 2
    assert await call.code() == grpc.StatusCode.OK
    assert call.done()


async def test_when_attempts_run_out_the_last_throttled_answer_comes_back(
    make_stub: Any, server: AioEchoServer
) -> None:
    stub, interceptor = make_stub(retry=FAST_RETRY.with_max_attempts(3))
    response = await stub.Unary(request("a:throttle-always"))
    assert response.outcome.state == SLOW_DOWN and response.attempt == 3
    assert server.script.attempts_of("a") == 3
    assert interceptor.stats().give_ups == 1


async def test_a_non_throttle_error_is_raised_after_one_attempt(make_stub: Any, server: AioEchoServer) -> None:
    stub, _ = make_stub()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Unary(request("a:abort=INVALID_ARGUMENT"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.script.attempts_of("a") == 1


async def test_opted_in_grpc_codes_are_retried(make_stub: Any, server: AioEchoServer) -> None:
    stub, _ = make_stub(throttle=ThrottlePolicy(grpc_codes={grpc.StatusCode.UNAVAILABLE}))
    assert (await stub.Unary(request("a:abort=UNAVAILABLE*2"))).attempt == 3
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Unary(request("b:abort=UNAVAILABLE"))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.script.attempts_of("b") == 5


async def test_a_deadline_shorter_than_the_token_wait_fails_at_once(make_stub: Any, server: AioEchoServer) -> None:
    bucket = TokenBucket(rate=0.5)
    stub, interceptor = make_stub(bucket)
    bucket.try_acquire()
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Unary(request("a:ok"), timeout=0.5)
    assert time.monotonic() - started < 0.4
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert server.script.attempts_of("a") == 0
    assert interceptor.stats().deadline_rejections == 1


async def test_the_callers_timeout_covers_all_attempts(make_stub: Any, server: AioEchoServer) -> None:
    stub, _ = make_stub(retry=RetryPolicy(max_attempts=50, initial_backoff=0.25, max_backoff=0.25, jitter=False))
    started = time.monotonic()
    response = await stub.Unary(request("a:throttle-always"), timeout=1.0)
    assert time.monotonic() - started < 1.5  # within the 1 s deadline, with slack for a loaded machine
    assert response.outcome.state == SLOW_DOWN
    assert 2 <= server.script.attempts_of("a") <= 4


async def test_cancel_during_token_wait_gives_the_token_back(make_stub: Any, server: AioEchoServer) -> None:
    bucket = TokenBucket(rate=1)
    stub, _ = make_stub(bucket)
    bucket.try_acquire()
    call = stub.Unary(request("a:ok"))
    await asyncio.sleep(0.1)
    assert bucket.available() < -0.5  # the waiting call holds the next token
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert bucket.available() > -0.5
    await asyncio.sleep(1.1)
    assert server.script.attempts_of("a") == 0


async def test_cancelling_the_task_during_backoff_stops_the_retries(make_stub: Any, server: AioEchoServer) -> None:
    stub, _ = make_stub(retry=RetryPolicy(initial_backoff=0.3, max_backoff=0.3, jitter=False))
    task = asyncio.ensure_future(stub.Unary(request("a:throttle-always")))
    for _ in range(500):  # the server has seen the first attempt
        if server.script.attempts_of("a"):
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.7)
    assert server.script.attempts_of("a") == 1


async def test_metadata_goes_unchanged_on_every_attempt(make_stub: Any, server: AioEchoServer) -> None:
    stub, _ = make_stub()
    await stub.Unary(request("a:throttle=2"), metadata=(("authorization", "Key pat"),))
    seen = server.script.metadata_of("a")
    assert len(seen) == 3 and all(md["authorization"] == "Key pat" for md in seen)


async def test_streaming_calls_take_a_token_when_they_start(make_stub: Any) -> None:
    stub, interceptor = make_stub(TokenBucket(rate=4, burst=1))
    started = time.monotonic()
    assert [r.text async for r in stub.ServerStream(echo_pb2.EchoRequest(text="s:ok", repeat=2))] == ["s:ok"] * 2
    assert (await stub.ClientStream(iter([request("c:ok"), request("c2")]))).text == "c:ok|c2"
    assert [r.text async for r in stub.BidiStream(iter([request("b:ok")]))] == ["b:ok"]
    assert time.monotonic() - started > 0.4
    assert interceptor.stats().attempts == 3


async def test_a_plain_interceptor_list_paces_unary_calls(server: AioEchoServer) -> None:
    # interceptors=[interceptor] is the documented minimal form: unary calls.
    bucket = TokenBucket(rate=1000)
    interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket, throttle=ECHO_POLICY, retry=FAST_RETRY)
    async with grpc.aio.insecure_channel(server.target, interceptors=[interceptor]) as channel:
        assert (await echo_pb2_grpc.EchoStub(channel).Unary(request("a:throttle=1"))).attempt == 2
    assert interceptor.stats().attempts == 2


async def test_many_tasks_hold_the_rate(make_stub: Any, server: AioEchoServer) -> None:
    stub, _ = make_stub(TokenBucket(rate=100, adaptive=None), budget=False)
    responses = await asyncio.gather(*(stub.Unary(request(f"t{i}:throttle=1")) for i in range(100)))
    assert all(r.attempt == 2 for r in responses)
    arrivals = server.script.arrivals()
    # 100 in any second: the first attempts go at once, the retries wait for the window to free.
    assert len(arrivals) == 200 and most_in_any_window(arrivals, 0.9) <= 100


async def test_sync_and_aio_share_one_bucket(server: AioEchoServer) -> None:
    # The aio channel lives in this loop; the sync one in worker threads.
    # A second, sync server keeps the sync calls off this loop's server.
    bucket = TokenBucket(rate=40)
    aio_interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket)
    sync_interceptor = ThrottlingInterceptor(bucket)
    with EchoServer() as sync_server:
        sync_channel = grpc.intercept_channel(grpc.insecure_channel(sync_server.target), sync_interceptor)
        sync_stub = echo_pb2_grpc.EchoStub(sync_channel)

        def sync_calls() -> None:
            for i in range(30):
                sync_stub.Unary(request(f"s{i}:ok"), timeout=30)

        async with grpc.aio.insecure_channel(server.target, interceptors=[aio_interceptor]) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            thread = threading.Thread(target=sync_calls)
            thread.start()
            await asyncio.gather(*(stub.Unary(request(f"a{i}:ok")) for i in range(30)))
            await asyncio.to_thread(thread.join, 30)
        sync_channel.close()
        arrivals = sorted(server.script.arrivals() + sync_server.script.arrivals())
    assert len(arrivals) == 60
    assert most_in_any_window(arrivals, 0.9) <= 40  # 40 in any second combined, not 40 each


async def test_two_event_loops_share_one_bucket(server: AioEchoServer) -> None:
    bucket = TokenBucket(rate=40)

    def other_loop() -> None:
        async def run() -> None:
            async with AioEchoServer() as other:
                interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket)
                async with grpc.aio.insecure_channel(other.target, interceptors=[interceptor]) as channel:
                    stub = echo_pb2_grpc.EchoStub(channel)
                    await asyncio.gather(*(stub.Unary(request(f"o{i}:ok")) for i in range(30)))
                results.extend(other.script.arrivals())

        asyncio.run(run())

    results: list[float] = []
    interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket)
    async with grpc.aio.insecure_channel(server.target, interceptors=[interceptor]) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        thread = threading.Thread(target=other_loop)
        thread.start()
        await asyncio.gather(*(stub.Unary(request(f"m{i}:ok")) for i in range(30)))
        await asyncio.to_thread(thread.join, 30)
    arrivals = server.script.arrivals() + results
    assert len(arrivals) == 60
    assert most_in_any_window(arrivals, 0.9) <= 40  # 40 in any second between both loops


def test_a_sync_bucket_that_may_block_is_refused() -> None:
    class Blocking:
        rate = 1.0

        def reserve(self, tokens: float = 1, *, max_wait: float = 0) -> None:
            return None

    with pytest.raises(ValueError, match="block the event loop"):
        grpc_throttle.aio.ThrottlingInterceptor(Blocking())  # type: ignore[arg-type]
