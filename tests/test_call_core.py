"""The one call core, pinned through every sync driver against a real server.

Each test here failed before the per-call plan (``interceptors/_plan.py``)
replaced the four drifted copies of the per-call algorithm.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from grpc_throttle import RateChanged, RetryPolicy, ThrottledChannel, ThrottlingInterceptor, TokenBucket, client
from grpc_throttle.testing import echo_pb2_grpc
from tests.drivers import wrap
from tests.scripted import ECHO_POLICY, FAST_RETRY, EchoServer, request


@pytest.fixture
def make_stub(echo_server: EchoServer, channel_kind: str) -> Iterator[Any]:
    channels: list[grpc.Channel] = []

    def make(bucket: TokenBucket | None = None, **kwargs: Any) -> tuple[echo_pb2_grpc.EchoStub, ThrottlingInterceptor]:
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("throttle", ECHO_POLICY)
        interceptor = ThrottlingInterceptor(bucket or TokenBucket(rate=1000), **kwargs)
        channel = wrap(channel_kind, grpc.insecure_channel(echo_server.target), interceptor)
        channels.append(channel)
        return echo_pb2_grpc.EchoStub(channel), interceptor

    yield make
    for channel in channels:
        channel.close()


# -- sync futures answer only once they have ended ------------------------------


def test_a_waiting_future_blocks_in_code_details_and_metadata(make_stub: Any) -> None:
    bucket = TokenBucket(rate=4)
    stub, _ = make_stub(bucket)
    assert bucket.try_acquire()  # the next token is 0.25 s away
    future = stub.Unary.future(request("a:ok"))
    assert not future.done()
    assert future.code() == grpc.StatusCode.OK  # before: UNKNOWN at once
    assert future.done()
    future2 = stub.Unary.future(request("b:ok"))
    assert future2.details() is not None and future2.done()
    future3 = stub.Unary.future(request("c:ok"))
    assert isinstance(future3.trailing_metadata(), tuple) and future3.done()
    future4 = stub.Unary.future(request("d:ok"))
    assert future4.initial_metadata() is not None and future4.done()


def test_a_future_backing_off_does_not_show_the_throttled_attempt(make_stub: Any) -> None:
    stub, _ = make_stub(retry=RetryPolicy(max_attempts=3, initial_backoff=0.3, max_backoff=0.3))
    future = stub.Unary.future(request("a:throttle=1"))
    time.sleep(0.1)  # the first attempt is answered throttled, the retry 0.3 s away
    assert future.code() == grpc.StatusCode.OK
    assert future.done() and future.result().attempt == 2


# -- a call whose deadline has passed is never sent, and takes no token ----------


@pytest.mark.parametrize("timeout", [0, -1])
@pytest.mark.parametrize("style", ["blocking", "with_call", "future"])
def test_unary_past_its_deadline_is_never_sent(
    make_stub: Any, echo_server: EchoServer, style: str, timeout: float
) -> None:
    bucket = TokenBucket(rate=1)
    stub, interceptor = make_stub(bucket)
    with pytest.raises(grpc.RpcError) as raised:
        if style == "blocking":
            stub.Unary(request("a:ok"), timeout=timeout)
        elif style == "with_call":
            stub.Unary.with_call(request("a:ok"), timeout=timeout)
        else:
            stub.Unary.future(request("a:ok"), timeout=timeout).result()
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert echo_server.script.attempts_of("a") == 0
    assert bucket.available() == pytest.approx(1.0)  # no token taken
    stats = interceptor.stats()
    assert (stats.calls, stats.attempts, stats.deadline_rejections) == (1, 0, 1)


@pytest.mark.parametrize("kind", ["server", "client", "bidi"])
def test_stream_past_its_deadline_is_never_sent(make_stub: Any, echo_server: EchoServer, kind: str) -> None:
    bucket = TokenBucket(rate=1)
    stub, _ = make_stub(bucket)
    with pytest.raises(grpc.RpcError) as raised:
        if kind == "server":
            list(stub.ServerStream(request("a:ok"), timeout=0))
        elif kind == "client":
            stub.ClientStream(iter([request("a:ok")]), timeout=0)
        else:
            list(stub.BidiStream(iter([request("a:ok")]), timeout=-1))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert echo_server.script.attempts_of("a") == 0
    assert bucket.available() == pytest.approx(1.0)


def test_a_stream_whose_wait_passes_its_deadline_fails_on_use_not_at_the_call(make_stub: Any) -> None:
    bucket = TokenBucket(rate=1)
    stub, _ = make_stub(bucket)
    assert bucket.try_acquire()  # the next token is 1 s away
    responses = stub.ServerStream(request("a:ok"), timeout=0.2)  # returns, as intercept_channel's does
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(responses))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# -- pushback on an OK throttled answer is honoured on the fast path too ---------


def test_pushback_on_a_throttled_ok_answer_sets_the_wait(make_stub: Any, echo_server: EchoServer) -> None:
    stub, _ = make_stub()
    assert stub.Unary(request("a:slowpush=300*1")).attempt == 2
    first, second = echo_server.script.arrivals()
    assert second - first >= 0.25  # 300 ms from the server, not the 10 ms back-off


def test_do_not_retry_pushback_on_a_throttled_ok_answer_is_obeyed(make_stub: Any, echo_server: EchoServer) -> None:
    stub, interceptor = make_stub()
    response = stub.Unary(request("a:slowpush=-1*1"))
    assert response.outcome.state != 0  # the throttled answer comes back unchanged
    assert echo_server.script.attempts_of("a") == 1
    assert interceptor.stats().give_ups == 1


# -- cost ----------------------------------------------------------------------


def test_a_cost_above_the_capacity_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="cost"):
        ThrottlingInterceptor(TokenBucket(rate=10), cost=11)  # 10 in any second: 11 never fits


@pytest.mark.parametrize("bad", [None, "1", 0, -1, float("nan"), float("inf"), 5, True])
def test_a_cost_function_answering_nonsense_fails_the_call_naming_cost(make_stub: Any, bad: Any) -> None:
    stub, _ = make_stub(TokenBucket(rate=10, capacity=2), cost=lambda method, req: bad)
    with pytest.raises(ValueError, match="cost"):
        stub.Unary(request("a:ok"))


# -- metadata= goes on every attempt, the call's own keys win ----------------------


def test_interceptor_metadata_is_on_every_attempt(make_stub: Any, echo_server: EchoServer) -> None:
    stub, _ = make_stub(metadata=[("x-team", "a"), ("x-key", "secret")])
    stub.Unary(request("a:throttle=2"), metadata=[("x-team", "mine")])
    seen = echo_server.script.metadata_of("a")
    assert len(seen) == 3
    assert all(md.get("x-team") == "mine" and md.get("x-key") == "secret" for md in seen)


def test_builder_channels_take_the_fast_path(echo_server: EchoServer) -> None:
    channel = client.throttled_channel(echo_server.target, rate=1000, metadata=[("x-key", "k")])
    try:
        assert isinstance(channel, ThrottledChannel)  # not wrapped in grpc.intercept_channel
        echo_pb2_grpc.EchoStub(channel).Unary(request("a:ok"))
        assert echo_server.script.metadata_of("a")[0]["x-key"] == "k"
    finally:
        channel.close()


# -- ThrottledChannel is a channel like grpc's ------------------------------------


def test_throttled_channel_callables_are_grpc_multicallables(echo_server: EchoServer) -> None:
    interceptor = ThrottlingInterceptor(TokenBucket(rate=10))
    with ThrottledChannel(grpc.insecure_channel(echo_server.target), interceptor) as channel:
        assert isinstance(channel.unary_unary("/m"), grpc.UnaryUnaryMultiCallable)
        assert isinstance(channel.unary_stream("/m"), grpc.UnaryStreamMultiCallable)
        assert isinstance(channel.stream_unary("/m"), grpc.StreamUnaryMultiCallable)
        assert isinstance(channel.stream_stream("/m"), grpc.StreamStreamMultiCallable)


def test_throttled_channel_refuses_a_non_channel() -> None:
    interceptor = ThrottlingInterceptor(TokenBucket(rate=10))
    with pytest.raises(ValueError, match=r"grpc\.Channel"):
        ThrottledChannel("localhost:1", interceptor)  # type: ignore[arg-type]


def test_registered_method_is_passed_only_when_grpc_passed_it(echo_server: EchoServer) -> None:
    seen: list[tuple[Any, ...]] = []
    real = grpc.insecure_channel(echo_server.target)

    class Recording(grpc.Channel):  # a pure unit: what ThrottledChannel hands on
        def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
            seen.append((args, kwargs))
            return real.unary_unary(*args[:3])

        unary_stream = stream_unary = stream_stream = unary_unary

        def subscribe(self, *args: Any, **kwargs: Any) -> None: ...
        def unsubscribe(self, *args: Any, **kwargs: Any) -> None: ...
        def close(self) -> None:
            real.close()

    channel = ThrottledChannel(Recording(), ThrottlingInterceptor(TokenBucket(rate=10)))
    channel.unary_unary("/m")
    channel.unary_unary("/m", None, None, True)
    assert seen == [(("/m", None, None), {}), (("/m", None, None, True), {})]
    channel.close()


# -- close() ends waiting calls at once, CANCELLED, tokens back ---------------------


def test_close_ends_waiting_calls_at_once_and_gives_their_tokens_back(echo_server: EchoServer) -> None:
    bucket = TokenBucket(rate=0.5)
    interceptor = ThrottlingInterceptor(bucket, throttle=ECHO_POLICY)
    channel = ThrottledChannel(grpc.insecure_channel(echo_server.target), interceptor)
    stub = echo_pb2_grpc.EchoStub(channel)
    assert bucket.try_acquire()  # every call below waits ~2 s or more
    futures = [stub.Unary.future(request(f"f{i}:ok")) for i in range(3)]
    outcome: list[BaseException] = []

    def blocking() -> None:
        try:
            stub.Unary(request("b:ok"))
        except grpc.RpcError as error:
            outcome.append(error)

    thread = threading.Thread(target=blocking)
    thread.start()
    time.sleep(0.1)
    started = time.monotonic()
    channel.close()
    thread.join(5)
    for future in futures:
        assert future.exception(timeout=5).code() == grpc.StatusCode.CANCELLED  # type: ignore[union-attr]
    assert time.monotonic() - started < 1.5  # not after their token waits
    assert [e.code() for e in outcome] == [grpc.StatusCode.CANCELLED]  # type: ignore[attr-defined]
    assert sum(echo_server.script.attempts.values()) == 0  # nothing reached grpc
    assert bucket.available() > -1  # the four waiters gave their slots back


def test_a_call_on_a_closed_channel_fails_at_once_and_takes_no_token(echo_server: EchoServer) -> None:
    bucket = TokenBucket(rate=1)
    channel = ThrottledChannel(grpc.insecure_channel(echo_server.target), ThrottlingInterceptor(bucket))
    stub = echo_pb2_grpc.EchoStub(channel)
    channel.close()
    for call in (
        lambda: stub.Unary(request("a:ok")),
        lambda: stub.Unary.future(request("a:ok")).result(),
        lambda: stub.Unary.with_call(request("a:ok")),
        lambda: next(iter(stub.ServerStream(request("a:ok")))),
        lambda: stub.ClientStream(iter([request("a:ok")])),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.CANCELLED
    assert bucket.available() == pytest.approx(1.0)


# -- hooks: removed with their interceptor, delivered once --------------------------


def test_a_dropped_interceptors_hook_is_removed_from_the_bucket() -> None:
    bucket = TokenBucket(rate=10)
    events: list[Any] = []
    for _ in range(30):
        ThrottlingInterceptor(bucket, on_event=events.append)
    gc.collect()
    bucket.rate = 5
    assert events == []


def test_one_hook_on_two_interceptors_of_one_bucket_hears_each_change_once() -> None:
    bucket = TokenBucket(rate=10)
    events: list[Any] = []
    first = ThrottlingInterceptor(bucket, on_event=events.append)
    second = ThrottlingInterceptor(bucket, on_event=events.append)
    bucket.rate = 5
    assert [e for e in events if isinstance(e, RateChanged)] == [RateChanged(10, 5, "configured")]
    del first
    gc.collect()
    bucket.rate = 4
    assert len(events) == 2  # the second interceptor still hears it
    assert second.bucket is bucket
