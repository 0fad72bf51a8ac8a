"""One set of Redis connections per event loop, for the asyncio Redis bucket.

A ``redis.asyncio`` connection (and so a pool or a cluster client) belongs to
the loop it was opened on: used from another loop it fails, and once its loop
is closed every call raises ``RuntimeError: Event loop is closed``. A bucket
outlives loops (``asyncio.run`` once per job) and serves several at once (one
per thread), so it keeps one client per loop, made on first use in that loop
from the same settings, in a ``WeakKeyDictionary`` keyed by the loop.

Each loop's client is closed with its loop: a small async generator started on
the loop holds it, and ``loop.shutdown_asyncgens()`` (which ``asyncio.run``
calls before it closes the loop) closes that generator, whose ``finally``
closes the client. A loop dropped without that step drops its client with it.

Example:
    >>> clients = PerLoop(lambda: make_client(), lambda c: c.aclose())  # doctest: +SKIP
    >>> client = await clients.get()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")
_logger = logging.getLogger(__name__)


class _Entry(Generic[T]):
    """One loop's state and the generator that closes it when the loop shuts down."""

    __slots__ = ("guard", "state")

    def __init__(self, state: T) -> None:
        #: What ``make()`` built for the loop.
        self.state = state
        #: Closes ``state`` when ``shutdown_asyncgens`` closes it; None until started.
        self.guard: AsyncGenerator[None, None] | None = None


class PerLoop(Generic[T]):
    """``make()``'s result, once per running event loop; ``close(state)`` when done with it.

    Args:
        make: Builds one loop's state (called on that loop, without awaiting).
        close: Closes a state (awaited on its loop).
    """

    def __init__(self, make: Callable[[], T], close: Callable[[T], Awaitable[None]]) -> None:
        #: Builds a loop's state.
        self._make = make
        #: Closes a loop's state.
        self._close = close
        #: The state of each loop in use, dropped with the loop.
        self._entries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Entry[T]] = weakref.WeakKeyDictionary()
        #: Guards _entries: threads with loops of their own use the bucket at once.
        self._lock = threading.Lock()
        #: The loop last served and its entry, read without the lock (one tuple, replaced whole):
        #: the common case is one loop calling again and again.
        self._last: tuple[asyncio.AbstractEventLoop | None, _Entry[T] | None] = (None, None)

    def current(self) -> T | None:
        """The running loop's state, or None when it has none yet (or no loop runs)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        with self._lock:
            entry = self._entries.get(loop)
        return None if entry is None else entry.state

    async def get(self) -> T:
        """The running loop's state, made on first use."""
        loop = asyncio.get_running_loop()
        last_loop, last = self._last
        if last_loop is loop and last is not None and last.guard is not None:
            return last.state
        with self._lock:
            entry = self._entries.get(loop)
            if entry is None:
                entry = self._entries[loop] = _Entry(self._make())
        if entry.guard is None:
            entry.guard = self._guard(loop, entry)
            await entry.guard.asend(None)  # runs up to its yield: the loop now tracks it
        self._last = (loop, entry)
        return entry.state

    async def aclose(self) -> None:
        """Close the running loop's state (a later :meth:`get` makes a new one).

        The states of other loops close when those loops shut down.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._entries.pop(loop, None)
            self._last = (None, None)
        if entry is None:
            return
        if entry.guard is not None:
            await entry.guard.aclose()  # its finally closes the state
        else:
            await self._close(entry.state)

    async def _guard(self, loop: asyncio.AbstractEventLoop, entry: _Entry[T]) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                if self._entries.get(loop) is entry:
                    del self._entries[loop]
                if self._last[1] is entry:
                    self._last = (None, None)
            try:
                await self._close(entry.state)
            except Exception as error:  # a connection already broken: nothing left to close
                _logger.debug("closing a loop's Redis connections: %r", error)
