"""The ways grpc-throttle sits on a channel, for tests that pin one contract across them.

Each maps a name to ``(target, interceptor) -> channel``. The behaviour suites
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

#: grpc drivers: grpc's interceptor plumbing, and our channel wrapper.
SYNC_DRIVERS: dict[str, Callable[[str, Any], grpc.Channel]] = {
    "intercept_channel": lambda target, i: grpc.intercept_channel(grpc.insecure_channel(target), i),
    "ThrottledChannel": lambda target, i: grpc_throttle.ThrottledChannel(grpc.insecure_channel(target), i),
}
