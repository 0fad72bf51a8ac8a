"""Ready-made throttled ``grpc.aio`` channels, mirroring :mod:`grpc_throttle.client`.

Same functions and arguments; they return ``grpc.aio.Channel`` objects
throttled by :class:`grpc_throttle.aio.ThrottlingInterceptor`. Buckets are
shared with the sync builders: one PAT, one bucket, whatever the channel kind.
Every builder sets ``("grpc.enable_retries", 0)`` unless you set
``grpc.enable_retries`` yourself: gRPC's own retries run below interceptors and
would send attempts that took no token.

Example:
    >>> from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc  # doctest: +SKIP
    >>> async with clarifai_channel() as channel:
    ...     stub = service_pb2_grpc.V2Stub(channel)
    ...     reply = await stub.ListModelTypes(service_pb2.ListModelTypesRequest(), timeout=10)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
import grpc.aio

from ..buckets import AsyncBucket, TokenBucket
from ..interceptors.aio import ThrottlingInterceptor
from ..interceptors.aio_channel import ThrottledChannel
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
    bucket: TokenBucket | AsyncBucket | None = None,
    retry: RetryPolicy | None = None,
    throttle: ThrottlePolicy | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    options: Iterable[tuple[str, Any]] = (),
    metadata: Iterable[tuple[str, str | bytes]] = (),
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to any API; see :func:`grpc_throttle.client.throttled_channel`."""
    chosen = bucket if bucket is not None else TokenBucket(rate, capacity)
    opts = channel_options(options, clarifai=False)
    return _build(target, credentials, opts, check_metadata(metadata), chosen, retry, throttle)


def clarifai_channel(
    pat: str | None = None,
    *,
    base: str | None = None,
    rate: float = CLARIFAI_RATE,
    capacity: float | None = None,
    bucket: TokenBucket | AsyncBucket | None = None,
    retry: RetryPolicy | None = None,
    throttle: ThrottlePolicy | None = None,
    options: Iterable[tuple[str, Any]] = (),
    root_certificates: bytes | None = None,
) -> grpc.aio.Channel:
    """A TLS ``grpc.aio`` channel to Clarifai; see :func:`grpc_throttle.client.clarifai_channel`.

    Raises:
        ValueError: No PAT (pass ``pat=`` or set ``CLARIFAI_PAT``), or a bad argument.
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
    bucket: TokenBucket | AsyncBucket | None = None,
    retry: RetryPolicy | None = None,
    throttle: ThrottlePolicy | None = None,
    options: Iterable[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A plaintext ``grpc.aio`` Clarifai channel to a local ``target`` (the emulator).

    See :func:`grpc_throttle.client.clarifai_insecure_channel`.
    """
    prepare_clarifai_stubs()
    user = resolve_pat(pat, from_env=False, required=False)
    opts = channel_options(options, clarifai=True)
    chosen = bucket_for(user, rate, capacity, bucket)
    return _build(target, None, opts, auth_metadata(user), chosen, retry, throttle)


def interceptor_of(channel: grpc.aio.Channel) -> ThrottlingInterceptor:
    """The interceptor throttling a channel built here, e.g. for its ``stats()``.

    Raises:
        ValueError: The channel was not built by this module.
    """
    return _registry.get(channel)


def _build(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: list[tuple[str, Any]],
    metadata: MetadataPairs,
    bucket: TokenBucket | AsyncBucket,
    retry: RetryPolicy | None,
    throttle: ThrottlePolicy | None,
) -> grpc.aio.Channel:
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"target must be a non-empty 'host:port', got {target!r}")
    # The metadata goes in the same rewrite of each attempt's details that
    # sets its timeout, so every retry carries it.
    throttling = ThrottlingInterceptor(bucket, retry=retry, throttle=throttle, metadata=metadata)
    if credentials is None:
        inner = grpc.aio.insecure_channel(target, options)
    else:
        inner = grpc.aio.secure_channel(target, credentials, options)
    # The fast path: every call kind paced, no grpc.aio interceptor machinery.
    channel = ThrottledChannel(inner, throttling)
    _registry.add(channel, throttling)
    return channel
