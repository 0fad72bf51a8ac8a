"""The default throttle policy on Clarifai's real message types.

The emulator answers over-quota calls exactly as Clarifai does (gRPC OK, body
status.code 11005). With no policy configured, the interceptor must spot
those, retry them, and hand back real answers.
"""

from __future__ import annotations

import threading

import grpc
import pytest
from clarifai_grpc.channel.clarifai_channel import ClarifaiChannel
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2

import grpc_throttle
import grpc_throttle.aio
from grpc_throttle import RetryPolicy, ThrottlePolicy, ThrottlingInterceptor, TokenBucket
from grpc_throttle.testing import ClarifaiEmulator

METADATA = (("authorization", "Key test-pat"),)


@pytest.fixture(scope="module", autouse=True)
def _clarifai_stub_ready() -> None:
    # clarifai-grpc's V2Stub needs a module global that only its own channel
    # factories set (grpc_throttle.client does this for its users).
    ClarifaiChannel.get_insecure_grpc_channel(base="127.0.0.1", port=1).close()


def test_the_default_policy_recognises_conn_throttled() -> None:
    throttled = service_pb2.MultiModelTypeResponse()
    throttled.status.code = status_code_pb2.CONN_THROTTLED
    ok = service_pb2.MultiModelTypeResponse()
    ok.status.code = status_code_pb2.SUCCESS
    policy = ThrottlePolicy()
    assert grpc_throttle.CONN_THROTTLED == status_code_pb2.CONN_THROTTLED == 11005
    assert policy.response_throttled(throttled)
    assert not policy.response_throttled(ok)
    assert not policy.response_throttled(object())  # no status field: not throttled


def test_throttled_answers_are_retried_until_every_call_succeeds() -> None:
    with ClarifaiEmulator(rate=5, burst=1) as emulator:
        interceptor = ThrottlingInterceptor(
            TokenBucket(rate=50),  # ten times the real quota: the server must push back
            retry=RetryPolicy(max_attempts=20, initial_backoff=0.05, max_backoff=0.4),
        )
        channel = grpc.intercept_channel(grpc.insecure_channel(emulator.target), interceptor)
        stub = service_pb2_grpc.V2Stub(channel)
        codes: list[int] = []
        lock = threading.Lock()

        def worker() -> None:
            for _ in range(3):
                response = stub.ListModelTypes(service_pb2.ListModelTypesRequest(), metadata=METADATA, timeout=30)
                with lock:
                    codes.append(response.status.code)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        channel.close()
        counters = emulator.counters()
    assert codes == [status_code_pb2.SUCCESS] * 12
    stats = interceptor.stats()
    assert counters.admitted == 12
    assert counters.throttled > 0
    assert stats.throttled == counters.throttled
    assert stats.attempts == counters.admitted + counters.throttled


async def test_the_aio_interceptor_retries_real_clarifai_answers() -> None:
    import asyncio

    with ClarifaiEmulator(rate=5, burst=1) as emulator:
        interceptor = grpc_throttle.aio.ThrottlingInterceptor(
            TokenBucket(rate=50), retry=RetryPolicy(max_attempts=20, initial_backoff=0.05, max_backoff=0.4)
        )
        async with grpc.aio.insecure_channel(emulator.target, interceptors=[interceptor]) as channel:
            stub = service_pb2_grpc.V2Stub(channel)
            responses = await asyncio.gather(
                *(stub.ListModelTypes(service_pb2.ListModelTypesRequest(), metadata=METADATA) for _ in range(8))
            )
        counters = emulator.counters()
    assert [r.status.code for r in responses] == [status_code_pb2.SUCCESS] * 8
    assert counters.throttled > 0 and interceptor.stats().throttled == counters.throttled


def test_attempts_that_run_out_hand_back_the_documented_throttle_answer() -> None:
    with ClarifaiEmulator(rate=1, burst=1) as emulator:
        interceptor = ThrottlingInterceptor(
            TokenBucket(rate=100), retry=RetryPolicy(max_attempts=2, initial_backoff=0, max_backoff=0)
        )
        channel = grpc.intercept_channel(grpc.insecure_channel(emulator.target), interceptor)
        stub = service_pb2_grpc.V2Stub(channel)
        stub.ListModelTypes(service_pb2.ListModelTypesRequest(), metadata=METADATA)
        response = stub.ListModelTypes(service_pb2.ListModelTypesRequest(), metadata=METADATA)
        channel.close()
    assert response.status.code == status_code_pb2.CONN_THROTTLED
    assert response.status.description == "Making too many requests"
    assert response.status.details == "exceeded limit of 1 requests per second"
