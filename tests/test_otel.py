"""OpenTelemetry metrics: observable instruments read from the interceptor's stats."""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from grpc_throttle import RetryPolicy, ThrottlingInterceptor, TokenBucket
from grpc_throttle.testing import echo_pb2, echo_pb2_grpc
from tests.scripted import ECHO_POLICY, EchoServer


def points(reader: InMemoryMetricReader, instrument: str, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    found = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == instrument:
                    found += [
                        p.value for p in metric.data.data_points if p.attributes.get("grpc_throttle.name") == name
                    ]
    return found


def test_interceptor_counters_reach_an_opentelemetry_reader(echo_server: EchoServer) -> None:
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    interceptor = ThrottlingInterceptor(
        TokenBucket(rate=500),
        retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.01),
        throttle=ECHO_POLICY,
        name="otel-test",
    )
    channel = grpc.intercept_channel(grpc.insecure_channel(echo_server.target), interceptor)
    echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoRequest(text="a:throttle=2"))
    channel.close()
    assert points(reader, "grpc_throttle.attempts", "otel-test") == [3]
    assert points(reader, "grpc_throttle.throttled", "otel-test") == [2]
    assert points(reader, "grpc_throttle.effective_rate", "otel-test") == [interceptor.stats().effective_rate]
