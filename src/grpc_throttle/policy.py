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
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NamedTuple

import grpc

from . import _checks

__all__ = [
    "CONN_EXCEED_HOURLY_LIMIT",
    "CONN_EXCEED_MONTHLY_LIMIT",
    "CONN_THROTTLED",
    "EXHAUSTED",
    "PUSHBACK_KEY",
    "SLOW_DOWN",
    "QuotaAnswer",
    "ThrottlePolicy",
    "server_pushback",
]

_log = logging.getLogger(__name__)

#: Clarifai's status code for "Making too many requests" (its per-second limit).
CONN_THROTTLED = 11005
#: Clarifai's status code for an hourly limit reached.
CONN_EXCEED_HOURLY_LIMIT = 11003
#: Clarifai's status code for a monthly limit reached.
CONN_EXCEED_MONTHLY_LIMIT = 11004


class QuotaAnswer(NamedTuple):
    """What an over-quota answer asks of the client (see :class:`ThrottlePolicy`)."""

    #: ``"slow_down"``: retry after a back-off; ``"window"``: a long window is
    #: full; ``"exhausted"``: the quota is used up, never retried.
    kind: Literal["slow_down", "window", "exhausted"]
    #: The full window's length in seconds (``"window"`` only).
    window: float = 0.0


#: The answer of a throttled call: slow down, then retry.
SLOW_DOWN = QuotaAnswer("slow_down")
#: The answer of a used-up quota: handed back as it is.
EXHAUSTED = QuotaAnswer("exhausted")

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
    """Classifies each answer: throttled (retry it), over a long window, used up, or final.

    Over-quota answers come in three kinds, each handled its own way:

    ============  =================  ===============================================
    kind          Clarifai default   what the interceptor does
    ============  =================  ===============================================
    slow down     11005 (per second)  retried after a back-off; lowers the rate
    window full   11003 (hourly)      with a matching ``Limit`` on the bucket, new
                                      calls wait until the window the client sees
                                      frees (within each call's deadline); else
                                      ``on_window``: hand the answer back
                                      (``"give_up"``) or retry once a whole window
                                      later (``"backoff"``). Never retried every
                                      few seconds for an hour.
    exhausted     11004 (monthly)     never retried: handed back as it is
    ============  =================  ===============================================

    Attributes:
        status_codes: Values of the response body's ``status.code`` that mean
            "slow down". Default ``{11005}`` (Clarifai's CONN_THROTTLED).
        window_codes: Codes that mean a long quota window is full, each with
            that window's length in seconds. Default ``{11003: 3600}``.
        exhausted_codes: Codes that mean the quota is used up. Default
            ``{11004}``.
        on_window: ``"give_up"`` (default) or ``"backoff"``: what a window
            answer does when the bucket declares no limit of that window.
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
    window_codes: Mapping[int, float] = dataclasses.field(default_factory=lambda: {CONN_EXCEED_HOURLY_LIMIT: 3600.0})
    exhausted_codes: frozenset[int] = frozenset({CONN_EXCEED_MONTHLY_LIMIT})
    on_window: Literal["give_up", "backoff"] = "give_up"

    def __post_init__(self) -> None:
        object.__setattr__(self, "status_codes", _int_set("status_codes", self.status_codes))
        object.__setattr__(self, "exhausted_codes", _int_set("exhausted_codes", self.exhausted_codes))
        if not isinstance(self.window_codes, Mapping):
            raise ValueError(f"window_codes must map codes to window seconds, got {self.window_codes!r}")
        windows: dict[int, QuotaAnswer] = {}
        for code, seconds in self.window_codes.items():
            _int_set("window_codes", [code])
            windows[code] = QuotaAnswer("window", _checks.positive(f"window_codes[{code}]", seconds))
        overlap = (self.status_codes & self.exhausted_codes) | (
            set(windows) & (self.status_codes | self.exhausted_codes)
        )
        if overlap:
            raise ValueError(
                f"a code may have one kind only: {sorted(overlap)} appear in two of "
                "status_codes, window_codes and exhausted_codes"
            )
        object.__setattr__(self, "window_codes", _FrozenCodes({code: a.window for code, a in windows.items()}))
        if self.on_window not in ("give_up", "backoff"):
            raise ValueError(f'on_window must be "give_up" or "backoff", got {self.on_window!r}')
        answers: dict[int, QuotaAnswer] = dict(windows)
        answers.update(dict.fromkeys(self.exhausted_codes, EXHAUSTED))
        answers.update(dict.fromkeys(self.status_codes, SLOW_DOWN))
        object.__setattr__(self, "_answers", answers)
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

    def quota_answer(self, response: Any) -> QuotaAnswer | None:
        """What a successful gRPC answer's body asks for, or None when it is not over quota."""
        if self.response_predicate is not None:
            return SLOW_DOWN if _ask(self.response_predicate, response, "response_predicate") else None
        answers: dict[int, QuotaAnswer] = self._answers  # type: ignore[attr-defined]
        if not answers or not _may_have_status(type(response)):
            return None
        try:
            code = getattr(getattr(response, "status", None), "code", None)
        except Exception:  # a body that breaks on access is no throttle signal
            _log.debug("grpc-throttle: reading status.code raised; treating the answer as final", exc_info=True)
            return None
        if not isinstance(code, int) or isinstance(code, bool):
            return None
        return answers.get(code)

    def response_throttled(self, response: Any) -> bool:
        """True when a successful gRPC answer's body says "slow down"."""
        return self.quota_answer(response) is SLOW_DOWN

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
        if dict(self.window_codes) != {CONN_EXCEED_HOURLY_LIMIT: 3600.0}:
            parts.append(f"window_codes={dict(sorted(self.window_codes.items()))}")
        if self.exhausted_codes != {CONN_EXCEED_MONTHLY_LIMIT}:
            parts.append(f"exhausted_codes={set(sorted(self.exhausted_codes))}")
        if self.on_window != "give_up":
            parts.append(f"on_window={self.on_window!r}")
        return f"ThrottlePolicy({', '.join(parts)})"


class _FrozenCodes(Mapping[int, float]):
    """A read-only, hashable code -> seconds mapping (the policy is frozen and hashable)."""

    __slots__ = ("_items",)

    def __init__(self, items: dict[int, float]) -> None:
        self._items = dict(items)

    def __getitem__(self, code: int) -> float:
        return self._items[code]

    def __iter__(self) -> Any:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __eq__(self, other: object) -> bool:
        return dict(self._items) == (dict(other) if isinstance(other, Mapping) else other)

    def __repr__(self) -> str:
        return repr(self._items)


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
