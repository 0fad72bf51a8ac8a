"""Over-quota answers by kind, through every driver, against the Clarifai emulator's real quotas.

Clarifai answers 11005 (slow down), 11003 (an hourly limit is full) and 11004
(a monthly limit is used up). Each kind has its own contract (the table in
``ThrottlePolicy``'s docstring), and each test here holds it through both
sync drivers and both grpc.aio drivers. The emulator's long windows
(``ClarifaiEmulator(windows=...)``) are its own arithmetic, not the bucket's.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from clarifai_grpc.channel.clarifai_channel import ClarifaiChannel
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2

import grpc_throttle.aio
from grpc_throttle import (
    GaveUp,
    Limit,
    RetryPolicy,
    RetryScheduled,
    ThrottlePolicy,
    ThrottlingInterceptor,
    TokenBucket,
)
from grpc_throttle.buckets.redis import RedisTokenBucket
from grpc_throttle.buckets.redis_aio import RedisTokenBucket as AsyncRedisTokenBucket
from grpc_throttle.testing import ClarifaiEmulator
from tests.drivers import AIO_DRIVERS, SYNC_DRIVERS
from tests.redis_server import RedisServer

METADATA = (("authorization", "Key kinds"),)
HOURLY, MONTHLY, SUCCESS = 11003, 11004, status_code_pb2.SUCCESS
DRIVERS = [*SYNC_DRIVERS, *AIO_DRIVERS]
RETRY = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.02)


@pytest.fixture(scope="module", autouse=True)
def _clarifai_stub_ready() -> None:
    ClarifaiChannel.get_insecure_grpc_channel(base="127.0.0.1", port=1).close()


class Client:
    """One interceptor on one driver; ``calls(n)`` makes n calls in a row and returns their status codes."""

    def __init__(self, driver: str, target: str, bucket: TokenBucket, **kwargs: Any) -> None:
        self.events: list[Any] = []
        kwargs.setdefault("retry", RETRY)
        self.driver, self.target = driver, target
        if driver in SYNC_DRIVERS:
            self.interceptor: Any = ThrottlingInterceptor(bucket, on_event=self.events.append, **kwargs)
        else:
            self.interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket, on_event=self.events.append, **kwargs)

    def calls(self, n: int, timeout: float = 10.0) -> list[int]:
        request = service_pb2.ListModelTypesRequest()
        if self.driver in SYNC_DRIVERS:
            channel = SYNC_DRIVERS[self.driver](grpc.insecure_channel(self.target), self.interceptor)
            stub = service_pb2_grpc.V2Stub(channel)
            try:
                return [stub.ListModelTypes(request, metadata=METADATA, timeout=timeout).status.code for _ in range(n)]
            finally:
                channel.close()

        async def run() -> list[int]:
            channel = AIO_DRIVERS[self.driver](self.target, self.interceptor)
            stub = service_pb2_grpc.V2Stub(channel)
            try:
                return [
                    (await stub.ListModelTypes(request, metadata=METADATA, timeout=timeout)).status.code
                    for _ in range(n)
                ]
            finally:
                await channel.close()

        return asyncio.run(run())

    def gave_up(self) -> list[str]:
        return [e.reason for e in self.events if isinstance(e, GaveUp)]

    def retries(self) -> list[float]:
        return [e.delay for e in self.events if isinstance(e, RetryScheduled)]


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Iterator[ClarifaiEmulator]:
    with ClarifaiEmulator(rate=1000, windows=request.param) as emu:
        yield emu


@pytest.mark.parametrize("emulator", [[(1, 3600.0, MONTHLY)]], indirect=True)
def test_a_used_up_quota_comes_back_unchanged_after_one_attempt(driver: str, emulator: ClarifaiEmulator) -> None:
    client = Client(driver, emulator.target, TokenBucket(rate=100))
    assert client.calls(2) == [SUCCESS, MONTHLY]
    assert emulator.counters().throttled == 1  # never retried
    stats = client.interceptor.stats()
    assert stats.quota_exhausted == 1 and stats.retries == 0 and client.retries() == []


@pytest.mark.parametrize("emulator", [[(1, 3600.0, HOURLY)]], indirect=True)
def test_a_full_hourly_window_gives_up_at_once_by_default(driver: str, emulator: ClarifaiEmulator) -> None:
    client = Client(driver, emulator.target, TokenBucket(rate=100))
    assert client.calls(2) == [SUCCESS, HOURLY]
    assert emulator.counters().throttled == 1
    assert client.gave_up() == ["window"] and client.interceptor.stats().window_full == 1


@pytest.mark.parametrize("emulator", [[(1, 0.5, HOURLY)]], indirect=True)
def test_on_window_backoff_retries_once_a_whole_window_later(driver: str, emulator: ClarifaiEmulator) -> None:
    policy = ThrottlePolicy(window_codes={HOURLY: 0.5}, on_window="backoff")
    client = Client(driver, emulator.target, TokenBucket(rate=100), throttle=policy)
    started = time.monotonic()
    assert client.calls(2) == [SUCCESS, SUCCESS]
    assert time.monotonic() - started >= 0.45
    assert client.retries() == [0.5]  # one retry, a whole window later; no retry every few ms
    assert emulator.counters().throttled == 1 and emulator.counters().admitted == 2


@pytest.mark.parametrize("emulator", [[(1, 0.5, HOURLY)]], indirect=True)
def test_on_window_backoff_gives_up_when_the_window_outlasts_the_deadline(
    driver: str, emulator: ClarifaiEmulator
) -> None:
    policy = ThrottlePolicy(window_codes={HOURLY: 0.5}, on_window="backoff")
    client = Client(driver, emulator.target, TokenBucket(rate=100), throttle=policy)
    assert client.calls(1) == [SUCCESS]
    assert client.calls(1, timeout=0.3) == [HOURLY]  # the last answer, unchanged
    assert client.gave_up() == ["deadline"]


@pytest.mark.parametrize("emulator", [[(2, 1.0, HOURLY)]], indirect=True)
def test_a_declared_limit_holds_calls_until_the_window_the_client_sees_frees(
    driver: str, emulator: ClarifaiEmulator
) -> None:
    # Another client (a bare channel on the same key) fills the window; ours
    # learns it from the 11003 answer and waits for the window to free.
    other = service_pb2_grpc.V2Stub(grpc.insecure_channel(emulator.target))
    for _ in range(2):
        assert other.ListModelTypes(service_pb2.ListModelTypesRequest(), metadata=METADATA).status.code == SUCCESS
    filled = time.monotonic()
    policy = ThrottlePolicy(window_codes={HOURLY: 1.0})
    bucket = TokenBucket(rate=100, limits=[Limit(2, 1.0)])
    client = Client(driver, emulator.target, bucket, throttle=policy)
    assert client.calls(2) == [SUCCESS, SUCCESS]
    assert time.monotonic() - filled >= 0.9
    assert emulator.counters().throttled == 1  # one 11003, then held: no retry storm
    assert client.gave_up() == []


@pytest.mark.parametrize("emulator", [[(1, 5.0, HOURLY)]], indirect=True)
def test_a_held_call_whose_deadline_ends_first_gets_the_answer_back(driver: str, emulator: ClarifaiEmulator) -> None:
    policy = ThrottlePolicy(window_codes={HOURLY: 5.0})
    client = Client(driver, emulator.target, TokenBucket(rate=100, limits=[Limit(1, 5.0)]), throttle=policy)
    assert client.calls(1) == [SUCCESS]
    # A second client, whose bucket saw none of the window's sends, learns
    # from the answer that it is full for about 5 s: past its 1 s deadline,
    # so it hands the answer back at once instead of waiting or retrying.
    other = Client(driver, emulator.target, TokenBucket(rate=100, limits=[Limit(5, 5.0)]), throttle=policy)
    assert other.calls(1, timeout=1.0) == [HOURLY]
    assert other.gave_up() == ["deadline"]
    assert emulator.counters().throttled == 1


@pytest.mark.parametrize("emulator", [[(3, 1.5, HOURLY)]], indirect=True)
def test_a_full_window_one_client_hears_of_holds_every_client_on_the_redis_key(
    driver: str, emulator: ClarifaiEmulator, redis_server: RedisServer, bucket_key: str
) -> None:
    # A bare channel fills the window. The first client's call is answered
    # 11003 and its Redis bucket holds the key; a second client (another
    # process, its own interceptor and bucket on the key) calling meanwhile
    # waits for the hold instead of hearing 11003 too. One 11003 in all.
    other = service_pb2_grpc.V2Stub(grpc.insecure_channel(emulator.target))
    for _ in range(3):
        assert other.ListModelTypes(service_pb2.ListModelTypesRequest(), metadata=METADATA).status.code == SUCCESS
    filled = time.monotonic()
    policy = ThrottlePolicy(window_codes={HOURLY: 1.5})
    kwargs: dict[str, Any] = {"key": bucket_key, "rate": 100, "limits": [Limit(3, 1.5)], "timeout": 1.0}
    sync_bucket = RedisTokenBucket.from_url(redis_server.url, **kwargs)
    aio_bucket = AsyncRedisTokenBucket.from_url(redis_server.url, **kwargs)
    first = Client(driver, emulator.target, sync_bucket if driver in SYNC_DRIVERS else aio_bucket, throttle=policy)
    second_bucket = RedisTokenBucket.from_url(redis_server.url, **kwargs)
    second = Client(next(iter(SYNC_DRIVERS)), emulator.target, second_bucket)
    answers: list[int] = []
    try:
        late = threading.Thread(target=lambda: (time.sleep(0.4), answers.extend(second.calls(1))))
        late.start()
        assert first.calls(1) == [SUCCESS]
        late.join(10)
        assert answers == [SUCCESS]
        assert time.monotonic() - filled >= 1.4
        assert emulator.counters().throttled == 1  # the second client never sent into the full window
        assert first.interceptor.stats().window_full == 1 and second.interceptor.stats().window_full == 0
    finally:
        sync_bucket.close()
        second_bucket.close()
        asyncio.run(aio_bucket.aclose())


def test_bad_windows_are_refused_naming_the_field() -> None:
    for bad, field in [
        ([(0, 1.0, HOURLY)], "count"),
        ([(1, 0.0, HOURLY)], "seconds"),
        ([(1, 1.0, SUCCESS)], "SUCCESS"),
        ([(1, 1.0)], "windows must hold"),
        ([(1, 1.0, "x")], "window code"),
    ]:
        with pytest.raises(ValueError, match=field):
            ClarifaiEmulator(windows=bad)  # type: ignore[arg-type]
