"""Server pushback, RetryInfo, the retry budget, adaptation, stats and hooks over real sockets."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

import grpc_throttle.aio
from grpc_throttle import (
    GaveUp,
    RateChanged,
    RetryBudget,
    RetryPolicy,
    RetryScheduled,
    ThrottledChannel,
    ThrottlePolicy,
    ThrottlingInterceptor,
    TokenBucket,
)
from grpc_throttle.policy import server_pushback
from grpc_throttle.testing import echo_pb2, echo_pb2_grpc
from tests.scripted import ECHO_POLICY, SLOW_DOWN, AioEchoServer, EchoServer

OPT_IN = ThrottlePolicy(grpc_codes={grpc.StatusCode.RESOURCE_EXHAUSTED})
FAST = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.01)


def request(text: str) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(text=text)


@pytest.fixture
def stub_for(echo_server: EchoServer) -> Iterator[Any]:
    channels: list[grpc.Channel] = []

    def make(interceptor: ThrottlingInterceptor) -> echo_pb2_grpc.EchoStub:
        channel = ThrottledChannel(grpc.insecure_channel(echo_server.target), interceptor)
        channels.append(channel)
        return echo_pb2_grpc.EchoStub(channel)

    yield make
    for channel in channels:
        channel.close()


def gaps(arrivals: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(arrivals)]


# -- what the server says wins over the computed back-off ---------------------------


@pytest.mark.parametrize("style", ["blocking", "future"])
def test_pushback_trailer_sets_the_wait(stub_for: Any, echo_server: EchoServer, style: str) -> None:
    interceptor = ThrottlingInterceptor(TokenBucket(rate=1000), retry=FAST, throttle=OPT_IN)
    stub = stub_for(interceptor)
    call = stub.Unary if style == "blocking" else (lambda r: stub.Unary.future(r).result(timeout=10))
    assert call(request("a:pushback=400*1")).attempt == 2
    assert gaps(echo_server.script.arrivals())[0] >= 0.35  # 400 ms, not the 10 ms back-off


@pytest.mark.parametrize("value", ["-1", "soon", ""])
def test_negative_or_malformed_pushback_means_do_not_retry(stub_for: Any, echo_server: EchoServer, value: str) -> None:
    events: list[Any] = []
    interceptor = ThrottlingInterceptor(TokenBucket(rate=1000), retry=FAST, throttle=OPT_IN, on_event=events.append)
    stub = stub_for(interceptor)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Unary(request(f"a:pushback={value}*1"))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert echo_server.script.attempts_of("a") == 1
    assert [e for e in events if not isinstance(e, RateChanged)] == [
        GaveUp("/grpc_throttle.testing.Echo/Unary", 1, "server")
    ]


def test_absurd_pushback_is_clamped(stub_for: Any, echo_server: EchoServer) -> None:
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01, max_pushback=0.2)
    stub = stub_for(ThrottlingInterceptor(TokenBucket(rate=1000), retry=retry, throttle=OPT_IN))
    assert stub.Unary(request("a:pushback=86400000*1"), timeout=10).attempt == 2


def test_pushback_can_be_ignored(stub_for: Any, echo_server: EchoServer) -> None:
    policy = ThrottlePolicy(grpc_codes={grpc.StatusCode.RESOURCE_EXHAUSTED}, honour_pushback=False)
    stub = stub_for(ThrottlingInterceptor(TokenBucket(rate=1000), retry=FAST, throttle=policy))
    assert stub.Unary(request("a:pushback=-1*1")).attempt == 2


def test_retry_info_in_status_details_sets_the_wait(stub_for: Any, echo_server: EchoServer) -> None:
    stub = stub_for(ThrottlingInterceptor(TokenBucket(rate=1000), retry=FAST, throttle=OPT_IN))
    assert stub.Unary(request("a:retryinfo=400*1")).attempt == 2
    assert gaps(echo_server.script.arrivals())[0] >= 0.35


async def test_aio_honours_pushback_and_retry_info() -> None:
    async with AioEchoServer() as server:
        interceptor = grpc_throttle.aio.ThrottlingInterceptor(TokenBucket(rate=1000), retry=FAST, throttle=OPT_IN)
        async with grpc.aio.insecure_channel(server.target, interceptors=[interceptor]) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            assert (await stub.Unary(request("a:pushback=300*1"))).attempt == 2
            assert (await stub.Unary(request("b:retryinfo=300*1"))).attempt == 2
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Unary(request("c:pushback=-5*1"))
        arrivals = server.script.arrivals()
    assert gaps(arrivals)[0] >= 0.25 and gaps(arrivals)[2] >= 0.25
    assert server.script.attempts_of("c") == 1


def test_server_pushback_parsing() -> None:
    assert server_pushback(None) is None
    assert server_pushback([("other", "1")]) is None
    assert server_pushback([("grpc-retry-pushback-ms", "1500")]) == 1.5
    assert server_pushback([("grpc-retry-pushback-ms", b"20")]) == 0.02
    assert server_pushback([("grpc-retry-pushback-ms", "-1")]) == math.inf
    assert server_pushback([("grpc-retry-pushback-ms", "1.5")]) == math.inf
    assert server_pushback([("grpc-status-details-bin", b"\xff\x00garbage")]) is None


# -- the retry budget stops a storm ----------------------------------------------------


def test_the_budget_stops_a_retry_storm_against_an_always_throttling_server(
    stub_for: Any, echo_server: EchoServer
) -> None:
    budget = RetryBudget(max_tokens=20, token_ratio=0.1)
    interceptor = ThrottlingInterceptor(
        TokenBucket(rate=1000, adaptive=None), retry=FAST, throttle=ECHO_POLICY, budget=budget
    )
    stub = stub_for(interceptor)
    answers = [stub.Unary(request(f"c{i}:throttle-always")) for i in range(60)]
    assert all(a.outcome.state == SLOW_DOWN for a in answers)  # handed back, not lost
    sent = len(echo_server.script.arrivals())
    # Without a budget: 60 calls x 5 attempts = 300 requests. The budget allows
    # retries only until 10 net throttles, then every call gets one attempt.
    assert sent <= 60 + 11
    assert interceptor.stats().give_ups == 60
    assert not budget.allows_retry()


def test_interceptors_on_one_bucket_share_one_budget(echo_server: EchoServer) -> None:
    bucket = TokenBucket(rate=1000)
    first = ThrottlingInterceptor(bucket)
    second = ThrottlingInterceptor(bucket)
    assert first._settings.budget is second._settings.budget
    assert ThrottlingInterceptor(TokenBucket(rate=1))._settings.budget is not first._settings.budget
    assert ThrottlingInterceptor(bucket, budget=False)._settings.budget is None
    with pytest.raises(ValueError, match="budget"):
        ThrottlingInterceptor(bucket, budget="yes")  # type: ignore[arg-type]


# -- adaptation slows every caller on the bucket ----------------------------------------


def test_a_throttled_answer_slows_every_interceptor_sharing_the_bucket(echo_server: EchoServer) -> None:
    bucket = TokenBucket(rate=100)
    events: list[Any] = []
    one = ThrottlingInterceptor(bucket, retry=FAST, throttle=ECHO_POLICY, on_event=events.append)
    other = ThrottlingInterceptor(bucket, retry=FAST, throttle=ECHO_POLICY)
    stub_one = echo_pb2_grpc.EchoStub(grpc.intercept_channel(grpc.insecure_channel(echo_server.target), one))
    stub_other = echo_pb2_grpc.EchoStub(grpc.intercept_channel(grpc.insecure_channel(echo_server.target), other))
    stub_one.Unary(request("a:throttle=1"))
    assert bucket.effective_rate == pytest.approx(70)
    assert other.stats().effective_rate == pytest.approx(70)  # the other caller slowed too
    stub_other.Unary(request("b:ok"))
    kinds = [type(e) for e in events]
    assert kinds[:2] == [RateChanged, RetryScheduled]
    assert events[0].reason == "throttle" and events[1].attempt == 1


def _order(script: Any) -> list[str]:
    with script.lock:
        return [entry[1] for entry in script.log]


@pytest.mark.parametrize("wrap", ["intercept_channel", "ThrottledChannel"])
def test_a_cut_re_spaces_the_calls_already_waiting(echo_server: EchoServer, wrap: str) -> None:
    # Six calls queued at 20/s (slots 0.05 s apart); the rate is then cut to 5/s.
    # Without re-spacing the queue would still go out at 20/s (0.25 s in all).
    bucket = TokenBucket(rate=20, burst=1)
    interceptor = ThrottlingInterceptor(bucket, retry=FAST, throttle=ECHO_POLICY)
    raw = grpc.insecure_channel(echo_server.target)
    grpc.channel_ready_future(raw).result(timeout=10)
    channel = (
        grpc.intercept_channel(raw, interceptor) if wrap == "intercept_channel" else ThrottledChannel(raw, interceptor)
    )
    stub = echo_pb2_grpc.EchoStub(channel)
    futures = [stub.Unary.future(request(f"{i}:ok")) for i in range(6)]
    bucket.set_effective_rate(5)
    for future in futures:
        future.result(timeout=10)
    channel.close()
    arrivals = echo_server.script.arrivals()
    assert _order(echo_server.script) == [str(i) for i in range(6)]  # still first come, first served
    assert arrivals[-1] - arrivals[0] > 0.7  # about 1.0 s: five gaps of 0.2 s
    assert interceptor.stats().token_wait_seconds > 2.0  # the longer waits are counted


async def test_aio_a_cut_re_spaces_the_calls_already_waiting() -> None:
    async with AioEchoServer() as server:
        bucket = TokenBucket(rate=20)
        interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket, retry=FAST, throttle=ECHO_POLICY)
        async with grpc.aio.insecure_channel(server.target, interceptors=[interceptor]) as channel:
            await channel.channel_ready()
            stub = echo_pb2_grpc.EchoStub(channel)
            tasks = [asyncio.ensure_future(stub.Unary(request(f"{i}:ok"))) for i in range(6)]
            await asyncio.sleep(0.01)  # every task holds its reservation
            bucket.set_effective_rate(5)
            await asyncio.gather(*tasks)
        arrivals = server.script.arrivals()
        assert _order(server.script) == [str(i) for i in range(6)]
        assert arrivals[-1] - arrivals[0] > 0.7


async def test_aio_a_wait_stretched_past_the_deadline_is_a_deadline_error() -> None:
    async with AioEchoServer() as server:
        bucket = TokenBucket(rate=10, burst=1)
        interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket, retry=FAST, throttle=ECHO_POLICY)
        async with grpc.aio.insecure_channel(server.target, interceptors=[interceptor]) as channel:
            await channel.channel_ready()
            stub = echo_pb2_grpc.EchoStub(channel)
            first = asyncio.ensure_future(stub.Unary(request("a:ok")))
            late = asyncio.ensure_future(stub.Unary(request("b:ok"), timeout=0.5))  # due in 0.1 s: fits
            await asyncio.sleep(0.01)
            bucket.set_effective_rate(0.5)  # now due in about 2 s: it does not
            await first
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await late
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _order(server.script) == ["a"]  # never sent
        assert interceptor.stats().deadline_rejections == 1


def test_a_wait_stretched_past_the_deadline_is_a_deadline_error(echo_server: EchoServer) -> None:
    bucket = TokenBucket(rate=10, burst=1)
    interceptor = ThrottlingInterceptor(bucket, retry=FAST, throttle=ECHO_POLICY)
    channel = ThrottledChannel(grpc.insecure_channel(echo_server.target), interceptor)
    stub = echo_pb2_grpc.EchoStub(channel)
    first = stub.Unary.future(request("a:ok"))
    late = stub.Unary.future(request("b:ok"), timeout=0.5)  # due in 0.1 s: fits
    bucket.set_effective_rate(0.5)  # now due in 2 s: it does not
    first.result(timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        late.result(timeout=10)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "was not sent" in caught.value.details()
    assert _order(echo_server.script) == ["a"]  # never sent
    # Its slot came back: only the first call's token, stretched to 2 s, is out
    # (about 0.05 tokens left 0.1 s after the cut; about -0.95 if it had not).
    assert bucket.available() == pytest.approx(0.05, abs=0.3)
    channel.close()


# -- stats and hooks count what the server saw -------------------------------------------


@pytest.mark.parametrize("wrap", ["intercept_channel", "ThrottledChannel"])
def test_stats_and_hooks_match_what_the_server_saw(echo_server: EchoServer, wrap: str) -> None:
    events: list[Any] = []
    interceptor = ThrottlingInterceptor(
        TokenBucket(rate=1000, adaptive=None),
        retry=FAST.with_max_attempts(3),
        throttle=ECHO_POLICY,
        budget=False,
        on_event=events.append,
    )
    raw = grpc.insecure_channel(echo_server.target)
    channel = (
        grpc.intercept_channel(raw, interceptor) if wrap == "intercept_channel" else ThrottledChannel(raw, interceptor)
    )
    stub = echo_pb2_grpc.EchoStub(channel)
    stub.Unary(request("a:ok"))
    stub.Unary(request("b:throttle=2"))
    stub.Unary.future(request("c:throttle-always")).result(timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.Unary(request("d:abort=INTERNAL"))
    channel.close()
    stats = interceptor.stats()
    sent = len(echo_server.script.arrivals())
    assert sent == 1 + 3 + 3 + 1
    assert stats.calls == 4
    assert stats.attempts == sent
    assert stats.throttled == 2 + 3
    assert stats.retries == 2 + 2
    assert stats.give_ups == 1
    assert stats.effective_rate == 1000
    assert [type(e).__name__ for e in events].count("RetryScheduled") == 4
    assert [e for e in events if isinstance(e, GaveUp)] == [GaveUp("/grpc_throttle.testing.Echo/Unary", 3, "attempts")]


async def test_aio_stats_match_what_the_server_saw() -> None:
    async with AioEchoServer() as server:
        interceptor = grpc_throttle.aio.ThrottlingInterceptor(
            TokenBucket(rate=1000), retry=FAST.with_max_attempts(3), throttle=ECHO_POLICY, budget=False
        )
        async with grpc.aio.insecure_channel(server.target, interceptors=[interceptor]) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            await asyncio.gather(stub.Unary(request("a:ok")), stub.Unary(request("b:throttle=2")))
            await stub.Unary(request("c:throttle-always"))
        sent = len(server.script.arrivals())
    stats = interceptor.stats()
    assert (stats.calls, stats.attempts, stats.throttled, stats.retries, stats.give_ups) == (3, sent, 5, 4, 1)
