"""The ways grpc-throttle sits on a channel, for tests that pin one contract across them.

The aio ones map a name to ``(target, interceptor) -> channel`` (grpc.aio takes
its interceptors when the channel is made), the sync ones wrap a channel. The behaviour suites
(test_call_core*.py, test_interceptor_*.py) run once per driver, and
test_interop.py runs gRPC's interop cases through each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

import grpc_throttle
import grpc_throttle.aio

#: grpc.aio drivers: grpc.aio's own interceptors (every kind), and our channel wrapper.
AIO_DRIVERS: dict[str, Callable[[str, Any], grpc.aio.Channel]] = {
    "for_channel()": lambda target, i: grpc.aio.insecure_channel(target, interceptors=i.for_channel()),
    "aio.ThrottledChannel": lambda target, i: grpc_throttle.aio.ThrottledChannel(grpc.aio.insecure_channel(target), i),
}

#: grpc drivers, ``(channel, interceptor) -> channel``: grpc's interceptor plumbing, and our channel wrapper.
SYNC_DRIVERS: dict[str, Callable[[grpc.Channel, Any], grpc.Channel]] = {
    "intercept_channel": grpc.intercept_channel,
    "ThrottledChannel": grpc_throttle.ThrottledChannel,
}


def wrap(kind: str, channel: grpc.Channel, interceptor: Any) -> grpc.Channel:
    """``channel`` throttled by ``interceptor`` through the sync driver named ``kind``."""
    return SYNC_DRIVERS[kind](channel, interceptor)
