"""Exceptions raised by grpc-throttle."""

from __future__ import annotations

__all__ = ["BucketUnavailableError", "ThrottleError"]


class ThrottleError(Exception):
    """Base class of every exception grpc-throttle raises itself."""


class BucketUnavailableError(ThrottleError):
    """A shared bucket's store could not be reached and its policy is to fail."""
