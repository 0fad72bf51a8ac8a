"""The emulator's Control service: read and reset its counters from afar.

:class:`ControlClient` lets another process (a benchmark, the CLI) see what a
running :class:`~grpc_throttle.testing.ClarifaiEmulator` admitted and refused,
and start it afresh, over the same port as the emulated API.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import grpc

from .. import _checks
from . import control_pb2
from . import control_pb2_grpc as _control_grpc_module

__all__ = ["ControlClient", "Counters", "add_control_service"]

#: The generated gRPC glue is untyped; reach it through Any.
_control_grpc: Any = _control_grpc_module


@dataclasses.dataclass(frozen=True)
class Counters:
    """A snapshot of the emulator's counters.

    Attributes:
        admitted: Calls answered normally, all users together.
        throttled: Calls refused as over quota, all users together.
        per_user: ``(admitted, throttled)`` by user, keyed by
            :func:`~grpc_throttle.testing.user_key`.

    Example:
        >>> Counters(admitted=2, throttled=1, per_user={"anonymous": (2, 1)}).throttled
        1
    """

    admitted: int
    throttled: int
    per_user: dict[str, tuple[int, int]]


class Controlled(Protocol):
    """What the Control service drives: the emulator's counters."""

    def counters(self) -> Counters:
        """Return a snapshot of the admitted and throttled calls."""

    def reset(self) -> None:
        """Forget every user: counters and quota state."""


def add_control_service(target: Controlled, server: grpc.Server) -> None:
    """Serve ``target``'s counters on ``server`` (the ``Control`` service)."""
    _control_grpc.add_ControlServicer_to_server(_ControlServicer(target), server)


class _ControlServicer:
    """The Control service: counters and reset, for another process."""

    def __init__(self, target: Controlled) -> None:
        self._target = target

    def GetCounters(self, request: Any, context: grpc.ServicerContext) -> Any:
        snap = self._target.counters()
        users = [
            control_pb2.UserCounters(user=k, admitted=a, throttled=t) for k, (a, t) in sorted(snap.per_user.items())
        ]
        return control_pb2.Counters(admitted=snap.admitted, throttled=snap.throttled, users=users)

    def Reset(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._target.reset()
        return control_pb2.ResetResponse()


class ControlClient:
    """Reads and resets a running emulator's counters over its Control service.

    Args:
        target: The emulator's address (:attr:`ClarifaiEmulator.target`).
        timeout: Deadline of each call, in seconds.

    Example:
        >>> with ControlClient("127.0.0.1:50051") as control:  # doctest: +SKIP
        ...     control.counters().throttled
    """

    def __init__(self, target: str, *, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = _checks.positive("timeout", timeout)
        self._channel = grpc.insecure_channel(target)
        self._stub = _control_grpc.ControlStub(self._channel)

    def counters(self) -> Counters:
        """Fetch a snapshot of the emulator's counters."""
        reply = self._stub.GetCounters(control_pb2.GetCountersRequest(), timeout=self.timeout)
        per_user = {u.user: (int(u.admitted), int(u.throttled)) for u in reply.users}
        total_admitted, total_throttled = int(reply.admitted), int(reply.throttled)
        return Counters(admitted=total_admitted, throttled=total_throttled, per_user=per_user)

    def reset(self) -> None:
        """Make the emulator forget every user (counters and quotas)."""
        self._stub.Reset(control_pb2.ResetRequest(), timeout=self.timeout)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ControlClient {self.target}>"
