"""Client interceptors: ``sync`` for ``grpc`` channels, ``aio`` for ``grpc.aio``.

Both share the per-call retry state (``_attempts``) and the counters
(``_stats``); they differ only in how they wait (threads vs asyncio).
"""

from __future__ import annotations

from ._stats import Stats
from .channel import ThrottledChannel
from .sync import ThrottlingInterceptor

__all__ = ["Stats", "ThrottledChannel", "ThrottlingInterceptor"]
