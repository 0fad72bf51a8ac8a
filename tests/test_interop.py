"""gRPC's own interop cases, run through every way grpc-throttle sits on a channel.

The cases and the server are upstream's (tests/interop/, see ORIGIN.md). Each
runs against a real ``TestService`` on a loopback port, once on a bare channel
and then through each configuration below, at two rates:

- ``fast``: far above the load, so pacing never shows;
- ``slow``: 5 calls per second with a burst of 1, and the bucket emptied
  before the case, so that its first paced call really waits for a token.

A case must pass wherever it passes on a bare channel. In the slow runs the
test also checks, from the interceptor's counters, that the paced calls did
wait (or, for a deadline shorter than the wait, were refused unsent).

The one known exception is grpc.aio's own stream-unary interceptor path:
``cancel_after_begin`` fails there with a do-nothing interceptor too (see
``test_grpc_aio_stream_unary_interceptors_cannot_cancel_after_begin``), so that
row is an expected failure; the aio ``ThrottledChannel`` and the ``client.aio``
builders, which do not use grpc.aio's interceptors, pass it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest

import grpc_throttle
import grpc_throttle.aio
import grpc_throttle.client
import grpc_throttle.client.aio
from tests.drivers import AIO_DRIVERS, SYNC_DRIVERS, wrap
from tests.interop import aio_methods, methods, service
from tests.interop.grpc_testing import test_pb2_grpc

SYNC_CASES = list(methods.TestCase)
AIO_CASES = list(aio_methods.TestCase)
RATES = {"fast": (1e6, 1e6), "slow": (5.0, 1.0)}


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    test_pb2_grpc.add_TestServiceServicer_to_server(service.TestService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@dataclass
class Pacing:
    """One configuration's bucket at one rate, shared by all its cases, and the interceptors that drew on it."""

    bucket: grpc_throttle.TokenBucket
    interceptors: list[Any] = field(default_factory=list)

    def totals(self) -> tuple[int, float, int]:
        """(calls, seconds waited for tokens, deadline refusals) over every interceptor."""
        stats = [i.stats() for i in self.interceptors]
        return (
            sum(s.calls for s in stats),
            sum(s.token_wait_seconds for s in stats),
            sum(s.deadline_rejections for s in stats),
        )


_pacings: dict[tuple[str, str], Pacing] = {}


def pacing(config: str, rate: str) -> Pacing:
    key = (config, rate)
    if key not in _pacings:
        r, capacity = RATES[rate]
        _pacings[key] = Pacing(grpc_throttle.TokenBucket(rate=r, capacity=capacity))
    return _pacings[key]


def check_paced(p: Pacing, rate: str, before: tuple[int, float, int]) -> None:
    """In a slow run, paced calls waited for a token or were refused for their deadline."""
    calls, waited, refused = p.totals()
    if rate == "slow" and calls > before[0]:
        assert waited > before[1] or refused > before[2], (
            f"{calls - before[0]} paced calls, none waited: the slow run did not exercise pacing"
        )


# -- sync ------------------------------------------------------------------------


def _sync_driver(kind: str) -> Callable[[str, Pacing], grpc.Channel]:
    def make(target: str, p: Pacing) -> grpc.Channel:
        interceptor = grpc_throttle.ThrottlingInterceptor(p.bucket)
        p.interceptors.append(interceptor)
        return wrap(kind, grpc.insecure_channel(target), interceptor)

    return make


def _client_builder(target: str, p: Pacing) -> grpc.Channel:
    channel = grpc_throttle.client.throttled_channel(target, rate=p.bucket.rate, bucket=p.bucket)
    p.interceptors.append(grpc_throttle.client.interceptor_of(channel))
    return channel


SYNC_CONFIGS: dict[str, Callable[[str, Pacing], grpc.Channel]] = {
    **{kind: _sync_driver(kind) for kind in SYNC_DRIVERS},  # intercept_channel, ThrottledChannel
    "client.throttled_channel": _client_builder,
}


def _sync_stub(case: methods.TestCase, channel: grpc.Channel) -> Any:
    if case is methods.TestCase.UNIMPLEMENTED_SERVICE:
        return test_pb2_grpc.UnimplementedServiceStub(channel)
    return test_pb2_grpc.TestServiceStub(channel)


@pytest.mark.parametrize("case", SYNC_CASES, ids=lambda c: c.value)
def test_sync_bare_channel(target: str, case: methods.TestCase) -> None:
    with grpc.insecure_channel(target) as channel:
        case.test_interoperability(_sync_stub(case, channel), None)


@pytest.mark.parametrize("case", SYNC_CASES, ids=lambda c: c.value)
@pytest.mark.parametrize("rate", list(RATES))
@pytest.mark.parametrize("config", list(SYNC_CONFIGS))
def test_sync(target: str, config: str, rate: str, case: methods.TestCase) -> None:
    p = pacing(config, rate)
    channel = SYNC_CONFIGS[config](target, p)
    p.bucket.try_acquire(1)  # empty the bucket: in the slow run, the first paced call waits
    before = p.totals()
    with channel:
        case.test_interoperability(_sync_stub(case, channel), None)
    check_paced(p, rate, before)


# -- aio -------------------------------------------------------------------------


def _aio_unary_only(target: str, p: Pacing) -> grpc.aio.Channel:
    interceptor = grpc_throttle.aio.ThrottlingInterceptor(p.bucket)
    p.interceptors.append(interceptor)
    return grpc.aio.insecure_channel(target, interceptors=[interceptor])


def _aio_driver(kind: str) -> Callable[[str, Pacing], grpc.aio.Channel]:
    def make(target: str, p: Pacing) -> grpc.aio.Channel:
        interceptor = grpc_throttle.aio.ThrottlingInterceptor(p.bucket)
        p.interceptors.append(interceptor)
        return AIO_DRIVERS[kind](target, interceptor)

    return make


def _aio_client_builder(target: str, p: Pacing) -> grpc.aio.Channel:
    channel = grpc_throttle.client.aio.throttled_channel(target, rate=p.bucket.rate, bucket=p.bucket)
    p.interceptors.append(grpc_throttle.client.aio.interceptor_of(channel))
    return channel


AIO_CONFIGS: dict[str, Callable[[str, Pacing], grpc.aio.Channel]] = {
    "interceptors=[i]": _aio_unary_only,
    **{kind: _aio_driver(kind) for kind in AIO_DRIVERS},  # for_channel(), aio.ThrottledChannel
    "client.aio.throttled_channel": _aio_client_builder,
}

#: grpc.aio's stream-unary interceptor path cannot cancel a call right after it begins.
GRPC_AIO_LIMITATION = pytest.mark.xfail(
    strict=True,
    raises=(ValueError, AssertionError, asyncio.CancelledError, grpc.aio.AioRpcError),
    reason="grpc.aio's own stream-unary interceptor path: cancel_after_begin fails with a do-nothing "
    "interceptor too (test_grpc_aio_stream_unary_interceptors_cannot_cancel_after_begin)",
)


def _aio_stub(case: aio_methods.TestCase, channel: grpc.aio.Channel) -> Any:
    if case is aio_methods.TestCase.UNIMPLEMENTED_SERVICE:
        return test_pb2_grpc.UnimplementedServiceStub(channel)
    return test_pb2_grpc.TestServiceStub(channel)


def _aio_params() -> list[Any]:
    params = []
    for config in AIO_CONFIGS:
        for rate in RATES:
            for case in AIO_CASES:
                marks = []
                if config == "for_channel()" and case is aio_methods.TestCase.CANCEL_AFTER_BEGIN:
                    marks.append(GRPC_AIO_LIMITATION)
                params.append(pytest.param(config, rate, case, marks=marks, id=f"{config}-{rate}-{case.value}"))
    return params


@pytest.mark.parametrize("case", AIO_CASES, ids=lambda c: c.value)
async def test_aio_bare_channel(target: str, case: aio_methods.TestCase) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        await aio_methods.test_interoperability(case, _aio_stub(case, channel))


@pytest.mark.parametrize(("config", "rate", "case"), _aio_params())
async def test_aio(target: str, config: str, rate: str, case: aio_methods.TestCase) -> None:
    p = pacing(config, rate)
    channel = AIO_CONFIGS[config](target, p)
    p.bucket.try_acquire(1)
    before = p.totals()
    async with channel:
        await aio_methods.test_interoperability(case, _aio_stub(case, channel))
    check_paced(p, rate, before)


class _PassThrough(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(client_call_details, request_iterator)


async def test_grpc_aio_stream_unary_interceptors_cannot_cancel_after_begin(target: str) -> None:
    """Why the for_channel() row of cancel_after_begin is an expected failure: grpc.aio fails it alone.

    If grpc fixes this, this test fails: drop GRPC_AIO_LIMITATION then.
    """
    async with grpc.aio.insecure_channel(target, interceptors=[_PassThrough()]) as channel:
        with pytest.raises((ValueError, AssertionError, asyncio.CancelledError, grpc.aio.AioRpcError)):
            case = aio_methods.TestCase.CANCEL_AFTER_BEGIN
            await aio_methods.test_interoperability(case, _aio_stub(case, channel))
