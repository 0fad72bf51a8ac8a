"""Ready-made throttled channels: Clarifai's API, the emulator, or any other API.

Each builder returns a ``grpc.Channel`` whose calls go through a
:class:`~grpc_throttle.ThrottlingInterceptor` (by way of
:class:`~grpc_throttle.ThrottledChannel`); :func:`interceptor_of` finds that
interceptor again (for :meth:`~grpc_throttle.ThrottlingInterceptor.stats`).
``grpc_throttle.client.aio`` has the same functions for ``grpc.aio``, and
``grpc_throttle.client.clarifai_sdk.install()`` paces the Clarifai SDK's own
objects through the same shared buckets.

Every builder sets the channel option ``("grpc.enable_retries", 0)`` unless you
pass your own ``grpc.enable_retries``: gRPC's built-in retries (from a service
config) run *below* interceptors, so one of our attempts could reach the server
several times without taking a token each time, and break the rate.

Example:
    >>> from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc  # doctest: +SKIP
    >>> channel = clarifai_channel()  # the PAT from CLARIFAI_PAT; 15 req/s
    >>> stub = service_pb2_grpc.V2Stub(channel)
    >>> reply = stub.ListModelTypes(service_pb2.ListModelTypesRequest(), timeout=10)
    >>> interceptor_of(channel).stats().retries
    0
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from ..buckets import Bucket, TokenBucket
from ..interceptors import ThrottledChannel, ThrottlingInterceptor
from ..policy import ThrottlePolicy
from ..retry import RetryPolicy
from ._common import (
    CLARIFAI_RATE,
    ChannelRegistry,
    MetadataPairs,
    auth_metadata,
    bucket_for,
    channel_options,
    check_metadata,
    clarifai_target,
    prepare_clarifai_stubs,
    resolve_pat,
    shared_bucket,
)

__all__ = [
    "clarifai_channel",
    "clarifai_insecure_channel",
    "interceptor_of",
    "shared_bucket",
    "throttled_channel",
]

_registry: ChannelRegistry[ThrottlingInterceptor] = ChannelRegistry()


def throttled_channel(
    target: str,
    *,
    rate: float,
    capacity: float | None = None,
    bucket: Bucket | None = None,
    retry: RetryPolicy | None = None,
    throttle: ThrottlePolicy | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    options: Iterable[tuple[str, Any]] = (),
    metadata: Iterable[tuple[str, str | bytes]] = (),
) -> grpc.Channel:
    """A channel to any API, paced at ``rate`` calls per second.

    Args:
        target: ``host:port`` to dial.
        rate: Calls per second the API allows (ignored when ``bucket`` is given).
        capacity: The burst the server is known to accept (``TokenBucket(burst=)``); None learns it.
        bucket: A bucket to share with other channels; default a new one.
        retry: Retry schedule of throttled answers; default ``RetryPolicy()``.
        throttle: What counts as throttled; default ``ThrottlePolicy()``.
        credentials: TLS credentials; None for a plaintext channel.
        options: gRPC channel options; ``("grpc.enable_retries", 0)`` is added
            unless you set ``grpc.enable_retries`` yourself.
        metadata: Sent with every call and every retry (a call's own value for
            the same key wins).

    Raises:
        ValueError: A bad argument; the message names it.

    Example:
        >>> channel = throttled_channel("localhost:50051", rate=100)
        >>> interceptor_of(channel).bucket.rate
        100.0
    """
    chosen = bucket if bucket is not None else TokenBucket(rate, capacity)
    opts = channel_options(options, clarifai=False)
    return _build(target, credentials, opts, check_metadata(metadata), chosen, retry, throttle)


def clarifai_channel(
    pat: str | None = None,
    *,
    base: str | None = None,
    rate: float = CLARIFAI_RATE,
    capacity: float | None = None,
    bucket: Bucket | None = None,
    retry: RetryPolicy | None = None,
    throttle: ThrottlePolicy | None = None,
    options: Iterable[tuple[str, Any]] = (),
    root_certificates: bytes | None = None,
) -> grpc.Channel:
    """A TLS channel to Clarifai's gRPC API, authenticated and kept at 15 req/s.

    ``V2Stub(channel)`` works on it directly. Every call and every retry
    carries ``authorization: Key <PAT>``. Channels for one PAT share one
    bucket (:func:`shared_bucket`), as Clarifai's quota is per user.

    Args:
        pat: Personal access token; None reads ``CLARIFAI_PAT``.
        base: ``host`` or ``host:port``; None reads ``CLARIFAI_GRPC_BASE``,
            else ``api.clarifai.com:443``.
        rate: The user's quota in calls per second (Clarifai's default: 15).
        capacity: The burst the server is known to accept (``TokenBucket(burst=)``),
            for the shared bucket when this call creates it; None learns it.
        bucket: Use this bucket instead of the PAT's shared one.
        retry: Retry schedule of throttled answers; default ``RetryPolicy()``.
        throttle: What counts as throttled; default body ``status.code`` 11005.
        options: gRPC channel options; ours (``grpc.enable_retries`` 0, 1 GiB
            message limits as ``ClarifaiChannel``) yield to yours.
        root_certificates: PEM roots; None uses the system's.

    Raises:
        ValueError: No PAT (pass ``pat=`` or set ``CLARIFAI_PAT``), a bad
            argument, or a ``rate``/``capacity`` other than that of the PAT's
            existing shared bucket.
        ImportError: clarifai-grpc is missing (``pip install grpc-throttle[clarifai]``).
    """
    prepare_clarifai_stubs()
    user = resolve_pat(pat, from_env=True, required=True)
    target = clarifai_target(base)
    credentials = grpc.ssl_channel_credentials(root_certificates)
    opts = channel_options(options, clarifai=True)
    chosen = bucket_for(user, rate, capacity, bucket)
    return _build(target, credentials, opts, auth_metadata(user), chosen, retry, throttle)


def clarifai_insecure_channel(
    target: str,
    pat: str | None = None,
    *,
    rate: float = CLARIFAI_RATE,
    capacity: float | None = None,
    bucket: Bucket | None = None,
    retry: RetryPolicy | None = None,
    throttle: ThrottlePolicy | None = None,
    options: Iterable[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A plaintext Clarifai channel to a local ``target``, such as the emulator.

    Same as :func:`clarifai_channel` except that the PAT is optional and never
    read from ``CLARIFAI_PAT`` (a real key should not travel in plaintext).
    Without a PAT, calls carry no ``authorization`` and the channel gets a
    bucket of its own.

    Example:
        >>> channel = clarifai_insecure_channel("127.0.0.1:50051", "demo-pat")  # doctest: +SKIP
    """
    prepare_clarifai_stubs()
    user = resolve_pat(pat, from_env=False, required=False)
    opts = channel_options(options, clarifai=True)
    chosen = bucket_for(user, rate, capacity, bucket)
    return _build(target, None, opts, auth_metadata(user), chosen, retry, throttle)


def interceptor_of(channel: grpc.Channel) -> ThrottlingInterceptor:
    """The interceptor throttling a channel built here, e.g. for its ``stats()``.

    Raises:
        ValueError: The channel was not built by this module.
    """
    if isinstance(channel, ThrottledChannel):
        return channel.interceptor
    return _registry.get(channel)


def _build(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: list[tuple[str, Any]],
    metadata: MetadataPairs,
    bucket: Bucket,
    retry: RetryPolicy | None,
    throttle: ThrottlePolicy | None,
) -> grpc.Channel:
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"target must be a non-empty 'host:port', got {target!r}")
    # The metadata goes in the same rewrite of each attempt's details that
    # sets its timeout, so every retry carries it and calls stay on the fast path.
    throttling = ThrottlingInterceptor(bucket, retry=retry, throttle=throttle, metadata=metadata)
    if credentials is None:
        raw = grpc.insecure_channel(target, options)
    else:
        raw = grpc.secure_channel(target, credentials, options)
    channel = ThrottledChannel(raw, throttling)
    _registry.add(channel, throttling)
    return channel
