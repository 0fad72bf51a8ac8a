"""Make the Clarifai SDK (``pip install clarifai``) pace and retry through grpc-throttle.

After :func:`install`, every SDK object made in this process (``User``,
``App``, ``Model``, ``Inputs``, ..., including those the SDK makes itself,
such as the ``App`` objects of ``User.list_apps()``) sends its calls through a
:class:`~grpc_throttle.ThrottledChannel`, sync and ``grpc.aio``
(``Model.async_predict``):

- one token bucket per PAT (or session token), the same one the
  :mod:`grpc_throttle.client` builders share (:func:`~grpc_throttle.client.shared_bucket`),
  unless ``bucket=`` is given;
- one gRPC channel per (target, credentials), not one per SDK object (an
  asyncio channel per event loop, as grpc.aio requires);
- the SDK's own ``RetryStub`` is left out of the stubs made while installed:
  it retries 10 times with fixed 5 s sleeps on 11005, 11006 and UNAVAILABLE
  and ignores deadlines, and would stack its retries on ours. Its UNAVAILABLE
  retries can be had back through
  ``ThrottlePolicy(grpc_codes={grpc.StatusCode.UNAVAILABLE})``;
- the SDK's authorization stays as it was: its ``AuthorizedStub`` wraps our
  multicallables, and the interceptor adds the same metadata to every attempt.

The two seams patched are ``ClarifaiAuthHelper.get_stub`` /
``get_async_stub`` and the default of ``create_stub(max_retry_attempts=)``;
:func:`uninstall` puts the original objects back. SDK objects made while
installed keep their throttled channels after :func:`uninstall`.

Example:
    >>> from grpc_throttle.client import clarifai_sdk  # doctest: +SKIP
    >>> clarifai_sdk.install(rate=15)
    >>> Model(url="https://clarifai.com/clarifai/main/models/general-image-recognition").predict_by_url(url)
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.metadata
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import grpc.aio

from .. import _fork
from ..buckets import Bucket, TokenBucket
from ..interceptors import ThrottledChannel, ThrottlingInterceptor
from ..interceptors import aio as _aio
from ..interceptors import aio_channel as _aio_channel
from ..policy import ThrottlePolicy
from ..retry import RetryPolicy
from ._common import CLARIFAI_RATE, bucket_for, channel_options, prepare_clarifai_stubs

__all__ = ["MIN_VERSION", "install", "installed", "uninstall"]

_log = logging.getLogger(__name__)

#: The oldest Clarifai SDK supported. The seams patched here
#: (``get_async_stub``, ``create_stub(..., is_async=)``) are there from 11.6,
#: but before 12.2 the SDK fails to import with protobuf 7 (it reads
#: ``FieldDescriptor.label``), which is what a fresh install gets; only 12.2
#: and newer are tested.
MIN_VERSION = (12, 2, 0)

#: The installation in force, or None.
_active: _Installation | None = None
_lock = threading.Lock()


def _renew_lock() -> None:
    global _lock
    _lock = threading.Lock()


_fork.at_fork(_renew_lock)


def install(
    rate: float = CLARIFAI_RATE,
    *,
    retry: RetryPolicy | None = None,
    throttle: ThrottlePolicy | None = None,
    bucket: Bucket | None = None,
    capacity: float | None = None,
) -> None:
    """Pace and retry every Clarifai SDK object made from now on, process-wide.

    Args:
        rate: The user's quota in calls per second (Clarifai's default: 15);
            the rate of each PAT's shared bucket. Ignored with ``bucket``.
        retry: Retry schedule of throttled answers; default ``RetryPolicy()``.
        throttle: What counts as throttled; default body ``status.code`` 11005.
            Add ``grpc_codes={grpc.StatusCode.UNAVAILABLE}`` for the
            UNAVAILABLE retries the SDK's ``RetryStub`` made.
        bucket: One bucket for every SDK call, whatever its PAT. Async calls
            need a :class:`~grpc_throttle.TokenBucket` (any sync bucket
            serves sync calls).
        capacity: The burst the server is known to accept, for the PAT buckets
            this creates (``TokenBucket(burst=)``); None learns it.

    Raises:
        ImportError: The SDK is missing, older than :data:`MIN_VERSION`, or
            lacks a seam patched here; the message names both versions.
        ValueError: A bad argument (named), or a ``rate``/``capacity`` other
            than that of a PAT's existing shared bucket (raised when that
            PAT's first SDK object is made).
        RuntimeError: Already installed; :func:`uninstall` first (installing
            twice would leave it unclear which settings rule).
    """
    global _active
    config = _Config(rate, retry, throttle, bucket, capacity)
    sdk = _Sdk.load()
    with _lock:
        if _active is not None:
            raise RuntimeError("grpc_throttle.client.clarifai_sdk is already installed: call uninstall() first")
        _active = _Installation(config, sdk)
        _active.patch()
    _log.info("Clarifai SDK %s paced by grpc-throttle", sdk.version)


def uninstall() -> None:
    """Put the SDK's original ``get_stub``, ``get_async_stub`` and ``create_stub`` defaults back.

    Does nothing when not installed. SDK objects made while installed keep
    their throttled channels; objects made afterwards are the SDK's own again.
    """
    global _active
    with _lock:
        active, _active = _active, None
        if active is not None:
            active.unpatch()


@contextmanager
def installed(
    rate: float = CLARIFAI_RATE,
    *,
    retry: RetryPolicy | None = None,
    throttle: ThrottlePolicy | None = None,
    bucket: Bucket | None = None,
    capacity: float | None = None,
) -> Iterator[None]:
    """:func:`install` for the ``with`` block, then :func:`uninstall`; same arguments and errors."""
    install(rate, retry=retry, throttle=throttle, bucket=bucket, capacity=capacity)
    try:
        yield
    finally:
        uninstall()


@dataclasses.dataclass(frozen=True)
class _Config:
    """install()'s arguments, validated once."""

    #: Calls per second of each PAT's bucket.
    rate: float
    retry: RetryPolicy | None
    throttle: ThrottlePolicy | None
    #: The one bucket for every call, or None for one per PAT.
    bucket: Bucket | None
    #: Burst size of each PAT's bucket; None for the default.
    capacity: float | None

    def __post_init__(self) -> None:
        if self.retry is not None and not isinstance(self.retry, RetryPolicy):
            raise ValueError(f"retry must be a grpc_throttle.RetryPolicy or None, got {self.retry!r}")
        if self.throttle is not None and not isinstance(self.throttle, ThrottlePolicy):
            raise ValueError(f"throttle must be a grpc_throttle.ThrottlePolicy or None, got {self.throttle!r}")
        if self.bucket is not None and not isinstance(self.bucket, Bucket):
            raise ValueError(f"bucket must be a grpc_throttle bucket (a buckets.Bucket) or None, got {self.bucket!r}")
        if self.bucket is not None and self.capacity is not None:
            raise ValueError("capacity applies to the buckets install() makes: pass capacity= or bucket=, not both")
        probe = TokenBucket(self.rate, self.capacity)  # validates rate and capacity, naming them
        object.__setattr__(self, "rate", probe.rate)


class _Sdk:
    """The installed SDK's seams, found and checked once."""

    def __init__(self, version: str, helper_module: Any, stub_module: Any) -> None:
        self.version = version
        #: ``clarifai.client.auth.helper``: ClarifaiAuthHelper and its https cache.
        self.helper_module = helper_module
        #: ``clarifai.client.auth.stub``: create_stub.
        self.stub_module = stub_module

    @classmethod
    def load(cls) -> _Sdk:
        needed = ".".join(map(str, MIN_VERSION))
        try:
            version = importlib.metadata.version("clarifai")
        except importlib.metadata.PackageNotFoundError:
            raise ImportError(
                f"the Clarifai SDK is not installed; grpc_throttle.client.clarifai_sdk needs clarifai>={needed}: "
                "pip install 'grpc-throttle[clarifai-sdk]'",
                name="clarifai",
            ) from None
        if _version_tuple(version) < MIN_VERSION:
            raise ImportError(
                f"clarifai {version} is installed; grpc_throttle.client.clarifai_sdk needs clarifai>={needed}",
                name="clarifai",
            )
        from clarifai.client.auth import helper, stub

        helper_class = getattr(helper, "ClarifaiAuthHelper", None)
        seams = [getattr(helper_class, "get_stub", None), getattr(helper_class, "get_async_stub", None)]
        create_stub = getattr(stub, "create_stub", None)
        if None in seams or _retry_default_index(create_stub) is None:
            raise ImportError(
                f"clarifai {version} lacks ClarifaiAuthHelper.get_stub/get_async_stub or "
                "create_stub(max_retry_attempts=), which grpc_throttle.client.clarifai_sdk patches",
                name="clarifai",
            )
        return cls(version, helper, stub)


class _Installation:
    """The patches in force and the channels they made."""

    def __init__(self, config: _Config, sdk: _Sdk) -> None:
        self._config = config
        self._sdk = sdk
        self._lock = _fork.register(self)
        #: (target, secure, root certificates path) -> the plain gRPC channel.
        self._channels: dict[tuple[str, bool, str | None], grpc.Channel] = {}
        #: (endpoint, user key) -> a V2Stub on a ThrottledChannel over that channel.
        self._stubs: dict[tuple[Any, ...], Any] = {}
        #: event loop -> (endpoint, user key) -> a V2Stub on an aio ThrottledChannel.
        self._async_stubs: dict[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = {}
        #: The bucket of SDK helpers without a PAT or session token.
        self._anonymous = TokenBucket(config.rate, config.capacity)
        #: What patch() replaced, to put back: (owner, attribute, original).
        self._originals: list[tuple[Any, str, Any]] = []

    def patch(self) -> None:
        helper_class = self._sdk.helper_module.ClarifaiAuthHelper
        create_stub = self._sdk.stub_module.create_stub
        installation = self

        def get_stub(helper: Any) -> Any:
            return installation.stub(helper, original_sync)

        def get_async_stub(helper: Any) -> Any:
            return installation.async_stub(helper, original_async)

        original_sync = helper_class.__dict__["get_stub"]
        original_async = helper_class.__dict__["get_async_stub"]
        defaults = create_stub.__defaults__
        index = _retry_default_index(create_stub)
        assert index is not None  # checked by _Sdk.load
        # One default, read at every call by every module that imported
        # create_stub: stubs made from now on have no RetryStub.
        no_retry = (*defaults[:index], 0, *defaults[index + 1 :])
        self._originals = [
            (helper_class, "get_stub", original_sync),
            (helper_class, "get_async_stub", original_async),
            (create_stub, "__defaults__", defaults),
        ]
        prepare_clarifai_stubs()
        helper_class.get_stub = get_stub
        helper_class.get_async_stub = get_async_stub
        create_stub.__defaults__ = no_retry

    def unpatch(self) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals = []

    def stub(self, helper: Any, original: Any) -> Any:
        """``helper.get_stub()``: a V2Stub on the shared throttled channel."""
        endpoint = self._endpoint(helper)
        if endpoint is None:
            return original(helper)  # the SDK raises its own error for an unknown base
        from clarifai_grpc.grpc.api import service_pb2_grpc

        user, metadata, bucket = self._user(helper)
        with self._lock:
            stub = self._stubs.get((endpoint, user))
            if stub is None:
                channel = self._channels.get(endpoint)
                if channel is None:
                    channel = self._channels[endpoint] = _channel(endpoint, grpc)
                interceptor = ThrottlingInterceptor(bucket, **self._policies(metadata))
                stub = service_pb2_grpc.V2Stub(ThrottledChannel(channel, interceptor))
                self._stubs[(endpoint, user)] = stub
        return stub

    def async_stub(self, helper: Any, original: Any) -> Any:
        """``helper.get_async_stub()``: a V2Stub on this event loop's throttled channel."""
        endpoint = self._endpoint(helper)
        if endpoint is None:
            return original(helper)
        from clarifai_grpc.grpc.api import service_pb2_grpc

        user, metadata, bucket = self._user(helper)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # grpc.aio picks the loop; nothing to share it with

        def build() -> Any:
            interceptor = _aio.ThrottlingInterceptor(bucket, **self._policies(metadata))
            return service_pb2_grpc.V2Stub(_aio_channel.ThrottledChannel(_channel(endpoint, grpc.aio), interceptor))

        if loop is None:
            return build()
        with self._lock:
            # A grpc.aio channel belongs to its loop: forget those of closed loops.
            for closed in [old for old in self._async_stubs if old.is_closed()]:
                del self._async_stubs[closed]
            stubs = self._async_stubs.setdefault(loop, {})
            stub = stubs.get((endpoint, user))
            if stub is None:
                stub = stubs[(endpoint, user)] = build()
        return stub

    def _endpoint(self, helper: Any) -> tuple[str, bool, str | None] | None:
        """Where the helper's SDK channel would go, as the SDK decides it; None if it cannot tell."""
        base = helper._base
        https = self._sdk.helper_module.base_https_cache.get(base)
        if https is None:
            return None
        if https:
            return base, True, helper._root_certificates_path or None
        return (base if ":" in base else f"{base}:80"), False, None

    def _user(self, helper: Any) -> tuple[str, tuple[tuple[str, str], ...], Any]:
        """The helper's user (a sha256, never the key), its SDK metadata, and its bucket."""
        secret = getattr(helper, "pat", "") or getattr(helper, "_token", "")
        if not secret:
            return "anonymous", (), self._config.bucket or self._anonymous
        metadata = tuple(helper.metadata)
        config = self._config
        bucket = bucket_for(secret, config.rate, config.capacity, config.bucket)
        user = hashlib.sha256(repr(metadata).encode()).hexdigest()
        return user, metadata, bucket

    def _policies(self, metadata: tuple[tuple[str, str], ...]) -> dict[str, Any]:
        # The SDK's AuthorizedStub passes the same metadata on each call; the
        # interceptor's copy covers stubs used without it (helper.get_stub()).
        return {"retry": self._config.retry, "throttle": self._config.throttle, "metadata": metadata}


def _channel(endpoint: tuple[str, bool, str | None], kind: Any) -> Any:
    """A plain ``grpc`` or ``grpc.aio`` channel with Clarifai's options and gRPC's own retries off."""
    target, secure, root_path = endpoint
    options = channel_options((), clarifai=True)
    if not secure:
        return kind.insecure_channel(target, options)
    roots = None
    if root_path is not None:
        with open(root_path, "rb") as file:
            roots = file.read()
    return kind.secure_channel(target, grpc.ssl_channel_credentials(roots), options)


def _retry_default_index(create_stub: Any) -> int | None:
    """Where ``max_retry_attempts`` sits in ``create_stub.__defaults__``; None if it does not."""
    code = getattr(create_stub, "__code__", None)
    defaults = getattr(create_stub, "__defaults__", None)
    if code is None or not defaults:
        return None
    positional: tuple[str, ...] = code.co_varnames[: code.co_argcount]
    with_defaults = positional[len(positional) - len(defaults) :]
    if "max_retry_attempts" not in with_defaults:
        return None
    return with_defaults.index("max_retry_attempts")


def _version_tuple(version: str) -> tuple[int, ...]:
    """``(12, 5, 0)`` for ``"12.5.0"``; a pre-release counts as its release (``"12.1.6rc1"`` as 12.1.6)."""
    parts: list[int] = []
    for part in version.split(".")[:3]:
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)
