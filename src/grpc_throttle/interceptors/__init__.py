"""Client interceptors: ``sync`` for ``grpc`` channels, ``aio`` for ``grpc.aio``.

Every per-call decision is made once, in ``_plan``; the sync driver
(``_call``), the aio driver (``aio``), the stream starts and
``ThrottledChannel`` differ only in how they wait and send.
"""

from __future__ import annotations

from ._stats import Stats
from .channel import ThrottledChannel
from .sync import ThrottlingInterceptor

__all__ = ["Stats", "ThrottledChannel", "ThrottlingInterceptor"]
