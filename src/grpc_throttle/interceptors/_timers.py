"""One timer thread per process for the sync interceptor's pending steps.

A call made with ``stub.Method.future(...)`` must return at once even when it
has to wait for a token or back off before a retry. Its next step is put here,
keyed by when it is due; a single daemon thread sleeps until the earliest one
and hands it to a small worker pool, so nothing polls and no thread is spent
per waiting call.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["Timer", "call_later"]


class Timer:
    """A scheduled callback; :meth:`cancel` stops it if it has not run."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _TimerThread:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        # Steps may call grpc's continuation, which in rare cases blocks for a
        # round trip; workers keep that off the timer thread.
        self._workers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="grpc-throttle")

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        with self._cond:
            heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="grpc-throttle-timers", daemon=True)
                self._thread.start()
            if self._heap[0][2] is timer:
                self._cond.notify()
        return timer

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        timer = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(wait)
            if not timer.cancelled:
                try:
                    self._workers.submit(timer.callback)
                except RuntimeError:
                    # The interpreter is shutting down (the main thread has
                    # returned while other threads still wait on calls): the
                    # pool takes no more work, so run the step here.
                    _run_quietly(timer.callback)


def _run_quietly(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        logging.getLogger("grpc_throttle.interceptors").exception("grpc-throttle: a timer step raised")


_TIMERS = _TimerThread()


def _reset_after_fork() -> None:
    # A forked child has none of the parent's threads: start afresh.
    global _TIMERS
    _TIMERS = _TimerThread()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def call_later(delay: float, callback: Callable[[], None]) -> Timer:
    """Run ``callback`` on a worker thread after ``delay`` seconds."""
    return _TIMERS.call_later(delay, callback)
