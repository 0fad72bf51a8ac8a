"""The throttle policy: which answers mean "slow down and try again".

Clarifai (our reference API) does not throttle with a gRPC error: an over-limit
call returns gRPC OK and a body whose ``status.code`` is 11005
(CONN_THROTTLED). The default policy reads that field by attribute, so any
message shaped like Clarifai's works without importing Clarifai. Other APIs
plug in their own codes or a predicate.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import grpc

__all__ = ["CONN_THROTTLED", "PUSHBACK_KEY", "ThrottlePolicy", "server_pushback"]

_log = logging.getLogger(__name__)

#: Clarifai's status code for "Making too many requests".
CONN_THROTTLED = 11005

#: The trailer in which a gRPC server says how long to wait (gRFC A6).
PUSHBACK_KEY = "grpc-retry-pushback-ms"

#: The trailer carrying a serialized google.rpc.Status (and its RetryInfo).
_STATUS_DETAILS_KEY = "grpc-status-details-bin"

#: gRPC codes a user may opt into retrying: the two a rate limiter answers
#: with. Others never are; even these may follow a call the server ran
#: (UNAVAILABLE on a connection lost mid-call), hence opt-in only.
_RETRYABLE_GRPC_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ThrottlePolicy:
    """Classifies each answer as throttled (retry it) or final (hand it back).

    Attributes:
        status_codes: Values of the response body's ``status.code`` that mean
            throttled. Default ``{11005}`` (Clarifai's CONN_THROTTLED).
        grpc_codes: gRPC status codes to treat as throttled. Empty by default:
            a gRPC error is handed back after one attempt, as without the
            interceptor. Opt in with ``{grpc.StatusCode.RESOURCE_EXHAUSTED}`` or
            ``UNAVAILABLE`` (only those two are accepted) only for methods
            that are safe to repeat: UNAVAILABLE can also mean the connection
            broke after the server ran the call.
        response_predicate: Replaces the ``status_codes`` check: called with
            each response message, returns True when it is throttled.
        error_predicate: Replaces the ``grpc_codes`` check: called with each
            ``grpc.RpcError``, returns True when it is throttled (you take the
            responsibility that the call is safe to repeat).
        honour_pushback: When a throttled answer carries the server's own
            wait (see :func:`server_pushback`), use it instead of the back-off,
            and do not retry when the server says so.

    Example:
        >>> import grpc
        >>> ThrottlePolicy(grpc_codes={grpc.StatusCode.RESOURCE_EXHAUSTED})
        ThrottlePolicy(status_codes={11005}, grpc_codes={RESOURCE_EXHAUSTED})
    """

    status_codes: frozenset[int] = frozenset({CONN_THROTTLED})
    grpc_codes: frozenset[grpc.StatusCode] = frozenset()
    response_predicate: Callable[[Any], bool] | None = None
    error_predicate: Callable[[grpc.RpcError], bool] | None = None
    honour_pushback: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "status_codes", _int_set("status_codes", self.status_codes))
        codes = _frozen("grpc_codes", self.grpc_codes)
        for code in codes:
            if code not in _RETRYABLE_GRPC_CODES:
                raise ValueError(
                    "grpc_codes may hold only grpc.StatusCode.UNAVAILABLE and "
                    f"grpc.StatusCode.RESOURCE_EXHAUSTED, got {code!r}"
                )
        object.__setattr__(self, "grpc_codes", codes)
        if not isinstance(self.honour_pushback, bool):
            raise ValueError(f"honour_pushback must be True or False, got {self.honour_pushback!r}")
        for name in ("response_predicate", "error_predicate"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ValueError(f"{name} must be callable or None, got {value!r}")

    def response_throttled(self, response: Any) -> bool:
        """True when a successful gRPC answer's body says "throttled"."""
        if self.response_predicate is not None:
            return _ask(self.response_predicate, response, "response_predicate")
        if not self.status_codes:
            return False
        if not _may_have_status(type(response)):
            return False
        try:
            code = getattr(getattr(response, "status", None), "code", None)
        except Exception:  # a body that breaks on access is no throttle signal
            _log.debug("grpc-throttle: reading status.code raised; treating the answer as final", exc_info=True)
            return False
        return isinstance(code, int) and not isinstance(code, bool) and code in self.status_codes

    def error_throttled(self, error: grpc.RpcError) -> bool:
        """True when a gRPC error is one the user opted to retry."""
        if self.error_predicate is not None:
            return _ask(self.error_predicate, error, "error_predicate")
        if not self.grpc_codes:
            return False
        code = getattr(error, "code", None)
        try:
            status = code() if callable(code) else None
            if status not in self.grpc_codes:
                return False
            # grpc itself reports RESOURCE_EXHAUSTED when an answer exceeds the
            # client's own size limit: the server ran the call, so no retry.
            details = error.details() if hasattr(error, "details") else ""
            return not (isinstance(details, str) and details.startswith("Received message larger than max"))
        except Exception:  # a broken error object is not a throttle signal
            return False

    def __repr__(self) -> str:
        parts = [f"status_codes={set(sorted(self.status_codes))}" if self.status_codes else "status_codes=set()"]
        if self.grpc_codes:
            parts.append("grpc_codes={" + ", ".join(sorted(c.name for c in self.grpc_codes)) + "}")
        if self.response_predicate is not None:
            parts.append(f"response_predicate={self.response_predicate!r}")
        if self.error_predicate is not None:
            parts.append(f"error_predicate={self.error_predicate!r}")
        return f"ThrottlePolicy({', '.join(parts)})"


def server_pushback(metadata: Iterable[tuple[str, Any]] | None) -> float | None:
    """How long the server asked the client to wait before retrying.

    Reads the ``grpc-retry-pushback-ms`` trailer (gRFC A6) and, failing that,
    a ``google.rpc.RetryInfo`` in the ``grpc-status-details-bin`` trailer.

    Returns:
        Seconds to wait; ``math.inf`` when the server said not to retry (a
        negative or malformed pushback, as A6 specifies); None when it said
        nothing.
    """
    details = None
    for key, value in metadata or ():
        if key == PUSHBACK_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            try:
                millis = int(text.strip())
            except ValueError:
                return math.inf
            return math.inf if millis < 0 else millis / 1000
        if key == _STATUS_DETAILS_KEY:
            details = value
    return None if details is None else _retry_info_delay(details)


def _retry_info_delay(blob: Any) -> float | None:
    try:
        from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
    except ImportError:  # googleapis-common-protos absent: no RetryInfo support
        return None
    try:
        status = status_pb2.Status.FromString(bytes(blob))
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                seconds = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
                return seconds if seconds >= 0 else math.inf
    except Exception:  # a malformed status is no instruction
        _log.debug("grpc-throttle: could not read grpc-status-details-bin", exc_info=True)
    return None


_STATUS_FIELD: dict[type, bool] = {}


def _may_have_status(kind: type) -> bool:
    # On a protobuf message without a ``status`` field, getattr costs ~1 µs
    # (protobuf raises AttributeError inside); the answer per type is cached.
    known = _STATUS_FIELD.get(kind)
    if known is None:
        descriptor = getattr(kind, "DESCRIPTOR", None)
        fields = getattr(descriptor, "fields_by_name", None)
        known = _STATUS_FIELD[kind] = True if fields is None else "status" in fields
    return known


def _ask(predicate: Callable[[Any], bool], value: Any, name: str) -> bool:
    # A predicate that crashes must not lose the call: the answer is handed
    # back to the caller as final, and the bug is logged.
    try:
        return bool(predicate(value))
    except Exception:
        _log.exception("grpc-throttle: %s raised; treating the answer as final", name)
        return False


def _frozen(name: str, values: Iterable[Any]) -> frozenset[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a set, got {values!r}")
    return frozenset(values)


def _int_set(name: str, values: Iterable[Any]) -> frozenset[int]:
    result = _frozen(name, values)
    for value in result:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must hold whole numbers, got {value!r}")
    return result
