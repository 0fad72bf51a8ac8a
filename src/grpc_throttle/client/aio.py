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

from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio

from ..buckets import AsyncBucket, TokenBucket
from ..interceptors import _bases
from ..interceptors.aio import ThrottlingInterceptor
from ..policy import ThrottlePolicy
from ..retry import RetryPolicy
from ._common import (
    CLARIFAI_RATE,
    ChannelRegistry,
    MetadataPairs,
    add_metadata,
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
    throttling = ThrottlingInterceptor(bucket, retry=retry, throttle=throttle)
    # Outermost, so that the throttling interceptor's retries carry it too.
    interceptors: list[Any] = [kind(metadata) for kind in _METADATA_KINDS] if metadata else []
    interceptors += throttling.for_channel()
    if credentials is None:
        channel = grpc.aio.insecure_channel(target, options, interceptors=interceptors)
    else:
        channel = grpc.aio.secure_channel(target, credentials, options, interceptors=interceptors)
    _registry.add(channel, throttling)
    return channel


class _AddMetadata:
    """Adds fixed metadata (e.g. the API key) to every call of one kind.

    ``grpc.aio`` files an interceptor under the first call kind it implements
    only, so each kind gets its own small class.
    """

    def __init__(self, metadata: MetadataPairs) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.aio.ClientCallDetails) -> Any:
        pairs = add_metadata(details.metadata, self._metadata)
        return details._replace(metadata=grpc.aio.Metadata(*pairs))  # type: ignore[attr-defined]

    def __repr__(self) -> str:  # keys only: values carry API keys
        return f"<{type(self).__name__} keys={[key for key, _ in self._metadata]}>"


class _UnaryUnaryMetadata(_AddMetadata, _bases.AioUnaryUnary):
    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStreamMetadata(_AddMetadata, _bases.AioUnaryStream):
    async def intercept_unary_stream(
        self, continuation: Callable[[Any, Any], Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _StreamUnaryMetadata(_AddMetadata, _bases.AioStreamUnary):
    async def intercept_stream_unary(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _StreamStreamMetadata(_AddMetadata, _bases.AioStreamStream):
    async def intercept_stream_stream(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


_METADATA_KINDS = (_UnaryUnaryMetadata, _UnaryStreamMetadata, _StreamUnaryMetadata, _StreamStreamMetadata)
