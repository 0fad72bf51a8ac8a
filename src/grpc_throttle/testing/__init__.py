"""Test helpers: a Clarifai emulator that enforces a per-user rate limit.

Needs the ``clarifai`` extra (``clarifai-grpc``) for the emulator itself; the
quota policies are pure Python.

Example:
    >>> from grpc_throttle.testing import ClarifaiEmulator
    >>> with ClarifaiEmulator(rate=15) as emu:  # doctest: +SKIP
    ...     print(emu.target)
"""

from __future__ import annotations

from .control import ControlClient, Counters
from .emulator import ClarifaiEmulator, user_key
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
