"""What the sync and the aio channel builders share: pure helpers and registries.

The personal access token (PAT) only ever leaves this module as the
``authorization`` metadata value; registries key on its sha256, and no
message or log line shows it.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from .. import _checks, _fork
from ..buckets import TokenBucket

__all__ = [
    "CLARIFAI_BASE",
    "CLARIFAI_RATE",
    "ChannelRegistry",
    "MetadataPairs",
    "auth_metadata",
    "bucket_for",
    "channel_options",
    "check_metadata",
    "clarifai_target",
    "prepare_clarifai_stubs",
    "resolve_pat",
    "shared_bucket",
]

#: Where Clarifai's gRPC API listens.
CLARIFAI_BASE = "api.clarifai.com:443"
#: Clarifai's documented default rate limit, requests per second per user.
CLARIFAI_RATE = 15.0
#: ClarifaiChannel's message size limit (1 GiB); gRPC's default of 4 MiB is
#: too small for some of Clarifai's answers (e.g. many outputs with embeddings).
_MAX_MESSAGE = 1024 * 1024 * 1024

MetadataPairs = tuple[tuple[str, str | bytes], ...]

_T = TypeVar("_T")

#: PAT sha256 -> the bucket every channel for that user shares by default.
_shared: dict[str, TokenBucket] = {}
_shared_lock = threading.Lock()


def _renew_shared_lock() -> None:
    global _shared_lock
    _shared_lock = threading.Lock()


_fork.at_fork(_renew_shared_lock)


def resolve_pat(pat: str | None, *, from_env: bool, required: bool) -> str | None:
    """The PAT to use: the argument, else ``CLARIFAI_PAT`` when ``from_env``.

    Raises:
        ValueError: It is missing while ``required``, or is not a usable
            header value. The message never shows the PAT.
    """
    if pat is None and from_env:
        pat = os.environ.get("CLARIFAI_PAT") or None
    if pat is None:
        if required:
            raise ValueError("no Clarifai personal access token: pass pat= or set CLARIFAI_PAT")
        return None
    if not isinstance(pat, str):
        raise ValueError(f"pat must be a string, got a {type(pat).__name__}")
    pat = pat.strip()  # a PAT pasted with its newline is still the same PAT
    if not pat or not pat.isascii() or not pat.isprintable() or any(c.isspace() for c in pat):
        raise ValueError("pat must be a non-empty string of printable ASCII without spaces")
    return pat


def auth_metadata(pat: str | None) -> MetadataPairs:
    """Clarifai's ``authorization: Key <PAT>`` header, or nothing without a PAT."""
    return () if pat is None else (("authorization", f"Key {pat}"),)


def check_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> MetadataPairs:
    """Validate extra metadata now, rather than failing on every call later."""
    return _checks.metadata_pairs(metadata)


def channel_options(options: Iterable[tuple[str, Any]], *, clarifai: bool) -> list[tuple[str, Any]]:
    """The user's channel options plus ours, unless the user set the same key."""
    if isinstance(options, (str, bytes)) or not isinstance(options, Iterable):
        raise ValueError(f"options must be a sequence of (name, value) pairs, got a {type(options).__name__}")
    result = list(options)
    for option in result:
        if not (isinstance(option, tuple) and len(option) == 2 and isinstance(option[0], str)):
            raise ValueError(f"options must be (name, value) pairs, got {option!r}")
    # gRPC's own retries run below the interceptors: one throttled-aware
    # attempt could reach the server several times without taking tokens.
    ours: list[tuple[str, Any]] = [("grpc.enable_retries", 0)]
    if clarifai:
        ours += [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)]
    names = {name for name, _ in result}
    return result + [option for option in ours if option[0] not in names]


def clarifai_target(base: str | None) -> str:
    """``host:port`` for Clarifai: ``base``, else ``CLARIFAI_GRPC_BASE``, else the API."""
    if base is None:
        base = os.environ.get("CLARIFAI_GRPC_BASE") or CLARIFAI_BASE
    if not isinstance(base, str) or not base.strip():
        raise ValueError(f"base must be a non-empty 'host' or 'host:port', got {base!r}")
    base = base.strip()
    if "://" in base:
        raise ValueError(f"base must be 'host' or 'host:port' such as 'api.clarifai.com', not a URL, got {base!r}")
    if base.startswith("["):
        return base if "]:" in base else f"{base}:443"
    if base.count(":") == 1:
        return base
    return f"[{base}]:443" if ":" in base else f"{base}:443"


def prepare_clarifai_stubs() -> None:
    """Let ``V2Stub(channel)`` work on any gRPC channel, in a fresh process too.

    clarifai-grpc 12.x builds ``V2Stub`` with a module global,
    ``wrap_response_deserializer``, that only its own ``ClarifaiChannel``
    factories set; until one ran, ``V2Stub(channel)`` raises ``TypeError:
    'NoneType' object is not callable``. We set the gRPC flavour, as its gRPC
    factories do, unless something already chose one.

    Raises:
        ImportError: clarifai-grpc is not installed.
    """
    try:
        from clarifai_grpc.channel import clarifai_channel
    except ImportError as exc:
        raise ImportError(
            "Clarifai channels need clarifai-grpc: pip install grpc-throttle[clarifai]", name=exc.name
        ) from exc
    if getattr(clarifai_channel, "wrap_response_deserializer", None) is None:
        clarifai_channel.wrap_response_deserializer = getattr(
            clarifai_channel, "_response_deserializer_for_grpc", _from_string
        )


def _from_string(message_class: Any) -> Any:
    return message_class.FromString


def shared_bucket(pat: str | None = None, *, rate: float | None = None, capacity: float | None = None) -> TokenBucket:
    """The token bucket every channel for this PAT shares by default.

    Clarifai's quota is per user, so all channels, threads and event loops
    using one PAT draw from one bucket. The first request for a PAT creates
    it (``rate`` defaults to 15/s); later ones get the same object.

    Args:
        pat: The personal access token; None reads ``CLARIFAI_PAT``.
        rate: Expected rate; None accepts whatever the bucket has.
        capacity: The burst the server is known to accept (``TokenBucket``'s
            ``burst``; None learns it). Checked like ``rate`` when the bucket
            exists already.

    Raises:
        ValueError: No PAT, or the bucket exists with another rate or burst
            (one user has one quota: pass the same values, or ``bucket=``).

    Example:
        >>> shared_bucket("my-pat") is shared_bucket("my-pat", rate=15)
        True
    """
    key = _pat_key(resolve_pat(pat, from_env=True, required=True))
    with _shared_lock:
        bucket = _shared.get(key)
        if bucket is None:
            bucket = _shared[key] = TokenBucket(CLARIFAI_RATE if rate is None else rate, capacity)
            return bucket
    if rate is not None and rate != bucket.rate:
        raise ValueError(
            f"rate {rate!r} differs from the {bucket.rate:g}/s bucket this PAT already shares; "
            "pass the same rate, or your own bucket="
        )
    if capacity is not None and capacity != bucket.declared_burst:
        shared = "a learned burst" if bucket.declared_burst is None else f"burst {bucket.declared_burst:g}"
        raise ValueError(
            f"capacity {capacity!r} differs from the {shared} of the bucket this PAT "
            "already shares; pass the same capacity, or your own bucket="
        )
    return bucket


def bucket_for(pat: str | None, rate: float, capacity: float | None, bucket: Any) -> Any:
    """``bucket`` if given, else the PAT's shared bucket, else a fresh one."""
    if bucket is not None:
        return bucket
    if pat is None:
        return TokenBucket(rate, capacity)
    return shared_bucket(pat, rate=rate, capacity=capacity)


def _pat_key(pat: str | None) -> str:
    assert pat is not None
    return hashlib.sha256(pat.encode()).hexdigest()


class ChannelRegistry(Generic[_T]):
    """Which interceptor throttles which channel, without keeping channels alive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_channel: weakref.WeakKeyDictionary[Any, _T] = weakref.WeakKeyDictionary()

    def add(self, channel: Any, interceptor: _T) -> None:
        with self._lock:
            self._by_channel[channel] = interceptor

    def get(self, channel: Any) -> _T:
        with self._lock:
            interceptor = self._by_channel.get(channel)
        if interceptor is None:
            raise ValueError(f"{channel!r} was not built by grpc_throttle.client")
        return interceptor
