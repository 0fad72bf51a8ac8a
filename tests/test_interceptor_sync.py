"""The sync interceptor against a real scripted grpc server over loopback."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from grpc_throttle import RetryPolicy, ThrottlePolicy, ThrottlingInterceptor, TokenBucket
from grpc_throttle.testing import echo_pb2, echo_pb2_grpc
from tests.drivers import wrap
from tests.scripted import ECHO_POLICY, FAST_RETRY, SLOW_DOWN, EchoServer, request


@pytest.fixture
def make_stub(echo_server: EchoServer, channel_kind: str) -> Iterator[Any]:
    channels: list[grpc.Channel] = []

    def make(
        bucket: TokenBucket | None = None,
        retry: RetryPolicy = FAST_RETRY,
        throttle: ThrottlePolicy = ECHO_POLICY,
        **kwargs: Any,
    ) -> tuple[echo_pb2_grpc.EchoStub, ThrottlingInterceptor]:
        interceptor = ThrottlingInterceptor(bucket or TokenBucket(rate=1000), retry=retry, throttle=throttle, **kwargs)
        channel = wrap(channel_kind, grpc.insecure_channel(echo_server.target), interceptor)
        channels.append(channel)
        return echo_pb2_grpc.EchoStub(channel), interceptor

    yield make
    for channel in channels:
        channel.close()


# -- the three unary styles: retried until the server answers --------------------


def test_blocking_call_is_retried_until_answered(make_stub: Any, echo_server: EchoServer) -> None:
    stub, interceptor = make_stub()
    response = stub.Unary(request("a:throttle=2"))
    assert response.attempt == 3 and response.outcome.state == 0
    assert echo_server.script.attempts_of("a") == 3
    stats = interceptor.stats()
    assert (stats.calls, stats.attempts, stats.throttled, stats.retries) == (1, 3, 2, 2)


def test_with_call_returns_the_response_and_a_usable_call(make_stub: Any, echo_server: EchoServer) -> None:
    stub, _ = make_stub()
    response, call = stub.Unary.with_call(request("a:throttle=1"))
    assert response.attempt == 2
    assert call.code() == grpc.StatusCode.OK
    assert call.done() and call.result() is response
    assert isinstance(call.trailing_metadata(), tuple)


def test_future_is_retried_and_resolves(make_stub: Any, echo_server: EchoServer) -> None:
    stub, _ = make_stub()
    future = stub.Unary.future(request("a:throttle=3"))
    assert future.result(timeout=10).attempt == 4
    assert future.code() == grpc.StatusCode.OK
    assert echo_server.script.attempts_of("a") == 4


@pytest.mark.parametrize("style", ["blocking", "with_call", "future"])
def test_when_attempts_run_out_the_last_throttled_answer_comes_back_unchanged(
    make_stub: Any, echo_server: EchoServer, style: str
) -> None:
    stub, interceptor = make_stub(retry=FAST_RETRY.with_max_attempts(3))
    response = call_style(stub, style, request("a:throttle-always"))
    assert response.outcome.state == SLOW_DOWN and response.attempt == 3
    assert echo_server.script.attempts_of("a") == 3
    assert interceptor.stats().give_ups == 1


@pytest.mark.parametrize("style", ["blocking", "with_call", "future"])
def test_a_non_throttle_error_is_raised_after_one_attempt(make_stub: Any, echo_server: EchoServer, style: str) -> None:
    stub, interceptor = make_stub()
    with pytest.raises(grpc.RpcError) as raised:
        call_style(stub, style, request("a:abort=INVALID_ARGUMENT"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert echo_server.script.attempts_of("a") == 1
    assert interceptor.stats().retries == 0


@pytest.mark.parametrize("style", ["blocking", "with_call", "future"])
def test_opted_in_grpc_codes_are_retried_though_blocking_continuations_return_them(
    make_stub: Any, echo_server: EchoServer, style: str
) -> None:
    # In the blocking styles grpc's continuation *returns* the failed call
    # instead of raising: the retry must still see it.
    policy = ThrottlePolicy(grpc_codes={grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})
    stub, _ = make_stub(throttle=policy)
    response = call_style(stub, style, request("a:abort=RESOURCE_EXHAUSTED*2"))
    assert response.attempt == 3
    assert echo_server.script.attempts_of("a") == 3


@pytest.mark.parametrize("style", ["blocking", "with_call", "future"])
def test_opted_in_error_that_persists_is_raised_after_the_last_attempt(
    make_stub: Any, echo_server: EchoServer, style: str
) -> None:
    policy = ThrottlePolicy(grpc_codes={grpc.StatusCode.UNAVAILABLE})
    stub, _ = make_stub(throttle=policy, retry=FAST_RETRY.with_max_attempts(2))
    with pytest.raises(grpc.RpcError) as raised:
        call_style(stub, style, request("a:abort=UNAVAILABLE"))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert echo_server.script.attempts_of("a") == 2


@pytest.mark.parametrize("style", ["blocking", "with_call", "future"])
def test_a_continuation_that_raises_fails_the_call_cleanly(make_stub: Any, style: str) -> None:
    # A request that cannot be serialized makes grpc's continuation *raise*
    # in future() (and return a failed call in the blocking styles).
    stub, interceptor = make_stub()
    with pytest.raises(grpc.RpcError) as raised:
        call_style(stub, style, object())
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert interceptor.stats().attempts == 1 and interceptor.stats().retries == 0


def call_style(stub: Any, style: str, req: Any) -> Any:
    if style == "blocking":
        return stub.Unary(req, timeout=10)
    if style == "with_call":
        return stub.Unary.with_call(req, timeout=10)[0]
    return stub.Unary.future(req, timeout=10).result(timeout=10)


# -- future(): returns at once, and is a well-behaved future -----------------------


def test_future_returns_at_once_while_a_token_wait_is_pending(make_stub: Any, echo_server: EchoServer) -> None:
    bucket = TokenBucket(rate=2)
    stub, _ = make_stub(bucket)
    assert bucket.try_acquire()  # the next token is 0.5 s away
    started = time.monotonic()
    future = stub.Unary.future(request("a:ok"))
    assert time.monotonic() - started < 0.2
    assert not future.done() and future.running()
    assert echo_server.script.attempts_of("a") == 0
    assert future.result(timeout=10).attempt == 1


def test_future_returns_at_once_while_a_backoff_is_pending(make_stub: Any, echo_server: EchoServer) -> None:
    stub, _ = make_stub(retry=RetryPolicy(initial_backoff=0.5, max_backoff=0.5, jitter=False))
    future = stub.Unary.future(request("a:throttle=1"))
    time.sleep(0.2)
    assert not future.done()
    assert echo_server.script.attempts_of("a") == 1
    with pytest.raises(grpc.FutureTimeoutError):
        future.result(timeout=0.01)
    assert future.result(timeout=10).attempt == 2


def test_future_done_callbacks_run_once_with_the_future(make_stub: Any) -> None:
    stub, _ = make_stub()
    seen: list[Any] = []
    done = threading.Event()
    future = stub.Unary.future(request("a:throttle=2"))

    def callback(f: Any) -> None:
        seen.append(f)
        done.set()

    future.add_done_callback(callback)
    assert done.wait(10)
    assert seen == [future]
    late: list[Any] = []
    future.add_done_callback(late.append)  # already done: runs at once
    assert late == [future]


def test_cancel_during_token_wait_gives_the_token_back(make_stub: Any, echo_server: EchoServer) -> None:
    bucket = TokenBucket(rate=1)
    stub, interceptor = make_stub(bucket)
    assert bucket.try_acquire()
    future = stub.Unary.future(request("a:ok"))
    assert future.cancel()
    assert future.cancelled() and future.done()
    assert future.code() == grpc.StatusCode.CANCELLED
    with pytest.raises(grpc.FutureCancelledError):
        future.result()
    assert bucket.available() > -0.5  # its token went back (would be ~-1 otherwise)
    time.sleep(1.2)
    assert echo_server.script.attempts_of("a") == 0
    assert interceptor.stats().cancelled == 1


def test_cancel_during_backoff_stops_the_retries(make_stub: Any, echo_server: EchoServer) -> None:
    stub, _ = make_stub(retry=RetryPolicy(initial_backoff=0.3, max_backoff=0.3, jitter=False))
    future = stub.Unary.future(request("a:throttle-always"))
    deadline = time.monotonic() + 5
    while echo_server.script.attempts_of("a") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert future.cancel()
    time.sleep(0.8)
    assert echo_server.script.attempts_of("a") == 1
    assert not future.cancel()  # already done


def test_cancel_during_the_attempt_cancels_it(make_stub: Any, echo_server: EchoServer) -> None:
    stub, _ = make_stub()
    future = stub.Unary.future(request("a:sleep=2"))
    time.sleep(0.3)
    assert future.cancel()
    with pytest.raises(grpc.FutureCancelledError):
        future.result(timeout=5)


# -- deadlines ---------------------------------------------------------------------


@pytest.mark.parametrize("style", ["blocking", "future"])
def test_a_deadline_shorter_than_the_token_wait_fails_at_once(
    make_stub: Any, echo_server: EchoServer, style: str
) -> None:
    bucket = TokenBucket(rate=0.5)
    stub, interceptor = make_stub(bucket)
    assert bucket.try_acquire()  # next token in 2 s
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        if style == "blocking":
            stub.Unary(request("a:ok"), timeout=0.5)
        else:
            stub.Unary.future(request("a:ok"), timeout=0.5).result()
    assert time.monotonic() - started < 0.4  # did not sleep the wait out
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline" in raised.value.details()
    assert echo_server.script.attempts_of("a") == 0
    assert interceptor.stats().deadline_rejections == 1
    assert bucket.available() == pytest.approx(0, abs=0.1)  # nothing was taken


def test_the_callers_timeout_covers_all_attempts(make_stub: Any, echo_server: EchoServer) -> None:
    retry = RetryPolicy(max_attempts=50, initial_backoff=0.25, max_backoff=0.25, jitter=False)
    stub, _ = make_stub(retry=retry)
    started = time.monotonic()
    response = stub.Unary(request("a:throttle-always"), timeout=1.0)
    elapsed = time.monotonic() - started
    assert response.outcome.state == SLOW_DOWN  # handed back, not an error
    assert elapsed < 1.5  # no back-off ran past the 1 s deadline (slack for a loaded machine)
    attempts = echo_server.script.attempts_of("a")
    assert 2 <= attempts <= 4
    lefts = [echo_server.script.time_left[("a", n)] for n in range(1, attempts + 1)]
    assert all(left is not None for left in lefts)
    assert lefts == sorted(lefts, reverse=True)  # each attempt got what remained
    assert lefts[0] <= 1.05 and lefts[-1] < 0.6  # type: ignore[operator]  # 1.05: clock slack between the two ends


# -- what goes on the wire ------------------------------------------------------------


def test_metadata_goes_unchanged_on_every_attempt(make_stub: Any, echo_server: EchoServer) -> None:
    stub, _ = make_stub()
    metadata = (("authorization", "Key secret-pat"), ("x-extra", "1"))
    stub.Unary(request("a:throttle=2"), metadata=metadata)
    seen = echo_server.script.metadata_of("a")
    assert len(seen) == 3
    for md in seen:
        assert md["authorization"] == "Key secret-pat" and md["x-extra"] == "1"


def test_every_attempt_takes_a_token(make_stub: Any, echo_server: EchoServer) -> None:
    bucket = TokenBucket(rate=5)
    stub, _ = make_stub(bucket, retry=RetryPolicy(max_attempts=4, initial_backoff=0, max_backoff=0))
    stub.Unary(request("a:throttle=3"))
    arrivals = echo_server.script.arrivals()
    assert len(arrivals) == 4
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.15  # 0.2 s apart at 5 tokens/s, with slack for a noisy machine


def test_cost_per_call_takes_that_many_tokens(make_stub: Any) -> None:
    bucket = TokenBucket(rate=10, capacity=5)
    stub, _ = make_stub(bucket, cost=lambda method, req: 5 if method.endswith("/Unary") else 1)
    stub.Unary(request("a:ok"))
    assert bucket.available() < 0.5


# -- streaming: a token at the start, no retry ------------------------------------------


def test_streaming_calls_take_a_token_when_they_start(make_stub: Any, echo_server: EchoServer) -> None:
    bucket = TokenBucket(rate=4, burst=1)
    stub, interceptor = make_stub(bucket)
    started = time.monotonic()
    assert [r.text for r in stub.ServerStream(echo_pb2.EchoRequest(text="s:ok", repeat=2))] == ["s:ok"] * 2
    assert stub.ClientStream(iter([request("c:ok"), request("c2")])).text == "c:ok|c2"
    assert [r.text for r in stub.BidiStream(iter([request("b:ok")]))] == ["b:ok"]
    assert time.monotonic() - started > 0.4  # three starts at 4/s: two waits of 0.25 s
    assert interceptor.stats().attempts == 3


def test_a_streaming_call_whose_token_is_beyond_its_deadline_fails(make_stub: Any) -> None:
    bucket = TokenBucket(rate=0.5)
    stub, _ = make_stub(bucket)
    bucket.try_acquire()
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.ServerStream(echo_pb2.EchoRequest(text="s:ok"), timeout=0.2))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_streaming_call_waiting_for_its_token_is_re_spaced_by_a_cut(make_stub: Any) -> None:
    bucket = TokenBucket(rate=20)
    stub, _ = make_stub(bucket)
    bucket.reserve()
    bucket.reserve()  # the stream's slot is 0.1 s away at 20/s
    outcome: list[Any] = []
    started = time.monotonic()
    worker = threading.Thread(
        target=lambda: outcome.append([r.text for r in stub.ServerStream(echo_pb2.EchoRequest(text="s:ok"))])
    )
    worker.start()
    time.sleep(0.03)  # it sleeps toward its slot
    bucket.set_effective_rate(2)  # ten times slower: the slot moves to about 0.8 s
    worker.join(timeout=10)
    assert outcome == [["s:ok"]]
    assert time.monotonic() - started > 0.5


def test_a_streaming_call_re_spaced_past_its_deadline_fails_unsent(make_stub: Any, echo_server: EchoServer) -> None:
    bucket = TokenBucket(rate=20)
    stub, _ = make_stub(bucket)
    bucket.reserve()
    bucket.reserve()
    errors: list[Any] = []

    def call() -> None:
        try:
            list(stub.ServerStream(echo_pb2.EchoRequest(text="s:ok"), timeout=0.4))
        except grpc.RpcError as error:
            errors.append(error.code())

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.03)
    bucket.set_effective_rate(2)
    worker.join(timeout=10)
    assert errors == [grpc.StatusCode.DEADLINE_EXCEEDED]
    assert echo_server.script.arrivals() == []


# -- sharing -------------------------------------------------------------------------


def test_two_channels_share_one_bucket_and_its_combined_rate(echo_server: EchoServer, channel_kind: str) -> None:
    bucket = TokenBucket(rate=20, burst=1)
    stubs = []
    for _ in range(2):
        channel = wrap(channel_kind, grpc.insecure_channel(echo_server.target), ThrottlingInterceptor(bucket))
        stubs.append(echo_pb2_grpc.EchoStub(channel))
    futures = [stubs[i % 2].Unary.future(request(f"c{i}:ok")) for i in range(30)]
    for future in futures:
        future.result(timeout=20)
    arrivals = echo_server.script.arrivals()
    assert len(arrivals) == 30
    assert max(arrivals) - min(arrivals) > 29 / 20 * 0.9  # 20/s combined, not 20/s each


def test_many_threads_hold_the_combined_rate_without_deadlock(make_stub: Any, echo_server: EchoServer) -> None:
    # Every call is throttled once: adaptation and the retry budget would
    # (rightly) step in at a 50% throttle rate, so both are off here.
    bucket = TokenBucket(rate=100, adaptive=None)
    stub, interceptor = make_stub(bucket, budget=False)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for k in range(10):
                stub.Unary(request(f"t{n}-{k}:throttle=1"), timeout=30)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and not errors
    arrivals = echo_server.script.arrivals()
    assert len(arrivals) == 320  # 160 calls, each throttled once
    assert max(arrivals) - min(arrivals) > 319 / 100 * 0.9
    assert interceptor.stats().attempts == 320


# -- gRPC's own retries must not multiply attempts behind our back --------------------


def test_service_config_retries_are_documented_to_be_disabled(echo_server: EchoServer, channel_kind: str) -> None:
    # With grpc's own retryPolicy on, one attempt of ours can hit the server
    # several times. The channel helpers turn it off; this shows why.
    config = json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": "grpc_throttle.testing.Echo"}],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.01s",
                        "maxBackoff": "0.01s",
                        "backoffMultiplier": 1,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )
    interceptor = ThrottlingInterceptor(TokenBucket(rate=1000), retry=FAST_RETRY)
    for enable, expected in ((1, 3), (0, 1)):
        options = [("grpc.service_config", config), ("grpc.enable_retries", enable)]
        channel = wrap(channel_kind, grpc.insecure_channel(echo_server.target, options=options), interceptor)
        with pytest.raises(grpc.RpcError):
            echo_pb2_grpc.EchoStub(channel).Unary(request(f"r{enable}:abort=UNAVAILABLE"))
        assert echo_server.script.attempts_of(f"r{enable}") == expected
        echo_server.script.attempts.clear()
        channel.close()
