"""Test helpers: a Clarifai emulator that enforces a per-user rate limit.

The quota policies are pure Python and imported at once. The emulator and its
control client need generated protobuf code (``clarifai-grpc`` and the
``control`` service): they are imported on first use (PEP 562), so importing
this package, or its quotas, works even where that code cannot load.

Example:
    >>> from grpc_throttle.testing import ClarifaiEmulator
    >>> with ClarifaiEmulator(rate=15) as emu:  # doctest: +SKIP
    ...     print(emu.target)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .quota import (
    POLICIES,
    FixedWindowQuota,
    Quota,
    SlidingWindowQuota,
    TokenBucketQuota,
    make_quota,
)

__all__ = [
    "POLICIES",
    "ClarifaiEmulator",
    "ControlClient",
    "Counters",
    "FixedWindowQuota",
    "Quota",
    "SlidingWindowQuota",
    "TokenBucketQuota",
    "make_quota",
    "user_key",
]

if TYPE_CHECKING:
    from .control import ControlClient, Counters
    from .emulator import ClarifaiEmulator, user_key

#: The names imported on first use, and the submodule holding each.
_LAZY = {
    "ClarifaiEmulator": "emulator",
    "user_key": "emulator",
    "ControlClient": "control",
    "Counters": "control",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # Submodules (echo_pb2, ...) are not attributes until imported; raising here lets
        # ``from grpc_throttle.testing import echo_pb2`` fall back to importing them.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
