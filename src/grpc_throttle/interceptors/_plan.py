"""The per-call plan: every decision about one logical call, with no I/O.

A driver (the sync future in ``_call``, the aio coroutine in ``aio``, the
stream starts and ``ThrottledChannel``'s fast path) tells the plan what
happened and does what it answers. The plan never sleeps, sends or blocks;
it reads the clock it was given and updates the counters and event hooks.
Shape, after google-api-core's retry: all decisions here, thin loops around.

    plan.reserve_wait()  -> None (refuse: give up now) or the longest wait
    plan.reserved(r)     -> Wait | Send | Refuse | GiveUp
    plan.woken(due_in)   -> Wait | Send | Refuse | GiveUp
    plan.answered(...)   -> Finish | Backoff | GiveUp

``Refuse`` ends a call that was never sent (its deadline cannot be met);
``GiveUp`` ends a call that was answered throttled with that last answer.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import grpc

from ..events import GaveUp, RetryScheduled, emit
from ..policy import QuotaAnswer, server_pushback
from ._attempts import Settings
from ._finished import LocalRpcError

__all__ = ["Backoff", "CallPlan", "Finish", "GiveUp", "Refuse", "Send", "Wait", "deadline_error"]


class Wait(NamedTuple):
    """Sleep ``delay`` seconds, then report :meth:`CallPlan.woken` with the reservation's ``due_in()``."""

    delay: float


class Send(NamedTuple):
    """Send the attempt now with this timeout (None: no deadline)."""

    timeout: float | None


class Refuse(NamedTuple):
    """End the call with ``error``: nothing was sent. Cancel the reservation held, if any."""

    error: LocalRpcError


class GiveUp(NamedTuple):
    """End the call with the last throttled answer, unchanged. Cancel the reservation held, if any."""


class Finish(NamedTuple):
    """End the call with the answer just received."""


class Backoff(NamedTuple):
    """Sleep ``delay`` seconds, then reserve again for the next attempt."""

    delay: float


Action = Wait | Send | Refuse | GiveUp | Finish | Backoff


def deadline_error(wait: float | None, remaining: float) -> LocalRpcError:
    """The error of a call refused because its token wait would pass its deadline."""
    what = "a token" if wait is None else f"{wait:.3f}s for a token"
    return LocalRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"grpc-throttle: waiting for {what} would pass the call's deadline "
        f"({max(remaining, 0.0):.3f}s left); the call was not sent",
    )


class CallPlan:
    """The decisions of one logical call: tokens, waits, deadline, retries, counters.

    Args:
        settings: The interceptor's shared, read-only settings.
        method: The full method name.
        timeout: The caller's timeout in seconds, or None.
        tokens: What one attempt costs.
        retries: False for streams: one attempt, never classified.
    """

    __slots__ = ("_throttled", "attempt", "deadline", "method", "retries", "round", "settings", "tokens")

    def __init__(
        self, settings: Settings, method: str, timeout: float | None, tokens: float, *, retries: bool = True
    ) -> None:
        self.settings = settings
        self.method = method
        self.tokens = tokens
        self.retries = retries
        #: Attempts sent so far.
        self.attempt = 0
        #: Absolute deadline on the settings' clock, or None.
        self.deadline = None if timeout is None else settings.clock() + timeout
        #: The adaptation round of the reservation behind the attempt in flight.
        self.round: object = 0
        #: True once an attempt was answered throttled (a give-up returns it).
        self._throttled = False
        settings.stats.add("calls")

    def remaining(self) -> float:
        """Seconds left before the caller's deadline (inf without one)."""
        return math.inf if self.deadline is None else self.deadline - self.settings.clock()

    # -- taking a token ------------------------------------------------------

    def reserve_wait(self) -> float | None:
        """The longest token wait to accept, or None when the deadline has passed already.

        With None the driver reserves nothing and acts on :meth:`expired`.
        """
        remaining = self.remaining()
        return None if remaining <= 0 else remaining

    def expired(self) -> Refuse | GiveUp:
        """The call's end when its deadline leaves no time to send (nothing reserved or held)."""
        return self._out_of_time(None, max(self.remaining(), 0.0))

    def reserved(self, reservation: Any) -> Wait | Send | Refuse | GiveUp:
        """The bucket answered: ``None`` (the wait would pass the deadline) or a reservation."""
        if reservation is None:
            return self._out_of_time(None, self.remaining())
        self.round = reservation.round
        delay = reservation.delay
        if delay > 0:
            self.settings.stats.add("token_wait_seconds", delay)
            return Wait(delay)
        return self._send()

    def woken(self, due_in: float) -> Wait | Send | Refuse | GiveUp:
        """The driver slept; ``due_in`` is the reservation's wait still left (a cut re-spaced it)."""
        if due_in > 0:
            remaining = self.remaining()
            if due_in > remaining:
                return self._out_of_time(due_in, remaining)
            self.settings.stats.add("token_wait_seconds", due_in)
            return Wait(due_in)
        return self._send()

    def _send(self) -> Send | Refuse | GiveUp:
        timeout = None
        if self.deadline is not None:
            timeout = self.deadline - self.settings.clock()
            if timeout <= 0:
                return self._out_of_time(0.0, 0.0)
        self.attempt += 1
        stats = self.settings.stats
        if self.attempt > 1:
            stats.count("attempts", "retries")
        else:
            stats.add("attempts")
        return Send(timeout)

    def _out_of_time(self, wait: float | None, remaining: float) -> Refuse | GiveUp:
        settings = self.settings
        if self._throttled:
            settings.stats.add("give_ups")
            if settings.hooks:
                emit(settings.hooks, GaveUp(self.method, self.attempt, "deadline"))
            return GiveUp()
        settings.stats.add("deadline_rejections")
        return Refuse(deadline_error(wait, remaining))

    # -- the answer ----------------------------------------------------------

    def answered(self, answer: QuotaAnswer | bool | None, trailing_metadata: Any = None) -> Finish | Backoff | GiveUp:
        """An attempt was answered; ``answer`` as the throttle policy classified it.

        None (or False) for an answer that is not over quota, True or
        :data:`SLOW_DOWN` for a throttled one, or the policy's
        :class:`QuotaAnswer` for a full window or a used-up quota. A plain
        failure (an error the policy does not call throttled) is no signal
        either way: report it with :meth:`failed` instead.
        """
        settings = self.settings
        if answer is None or answer is False:
            settings.on_answer(False, self.round)
            return Finish()
        if answer is True or answer.kind == "slow_down":
            settings.on_answer(True, self.round)
            self._throttled = True
            delay = self._delay_before_retry(trailing_metadata)
            return GiveUp() if delay is None else Backoff(delay)
        if answer.kind == "exhausted":
            settings.stats.add("quota_exhausted")
            return Finish()  # never retried: the answer goes back as it is
        return self._window_full(answer.window)

    def _window_full(self, window: float) -> Backoff | GiveUp:
        # A long window (an hourly limit) is full. With a matching limit on
        # the bucket, it holds every new call until the window frees, and
        # this call reserves again if its deadline lets it wait that long;
        # otherwise the policy says: hand the answer back, or retry a whole
        # window later. Never a retry every few seconds for the hour.
        settings = self.settings
        settings.stats.add("window_full")
        self._throttled = True
        reason: Any
        free_in = settings.hold_window(window)
        if self.attempt >= settings.retry.max_attempts:
            reason = "attempts"
        elif free_in is not None or settings.throttle.on_window == "backoff":
            wait = window if free_in is None else free_in
            if wait < self.remaining():
                if free_in is None:  # the policy's back-off (a wait the bucket holds is a token wait)
                    settings.stats.add("backoff_seconds", wait)
                if settings.hooks:
                    emit(settings.hooks, RetryScheduled(self.method, self.attempt, wait, False))
                return Backoff(0.0 if free_in is not None else wait)
            reason = "deadline"
        else:
            reason = "window"
        settings.stats.add("give_ups")
        if settings.hooks:
            emit(settings.hooks, GaveUp(self.method, self.attempt, reason))
        return GiveUp()

    def _delay_before_retry(self, trailing_metadata: Any) -> float | None:
        # The server's own wait, when it gave one, replaces the back-off. No
        # sleep runs to or past the deadline.
        settings = self.settings
        retry = settings.retry
        pushback = server_pushback(trailing_metadata) if settings.throttle.honour_pushback else None
        reason: Any
        if self.attempt >= retry.max_attempts:
            reason = "attempts"
        elif pushback == math.inf:
            reason = "server"
        elif settings.budget is not None and not settings.budget.allows_retry():
            reason = "budget"
        else:
            delay = (
                retry.backoff(self.attempt, settings.random) if pushback is None else min(pushback, retry.max_pushback)
            )
            if delay < self.remaining():
                settings.stats.add("backoff_seconds", delay)
                if settings.hooks:
                    emit(settings.hooks, RetryScheduled(self.method, self.attempt, delay, pushback is not None))
                return delay
            reason = "deadline"
        settings.stats.add("give_ups")
        if settings.hooks:
            emit(settings.hooks, GaveUp(self.method, self.attempt, reason))
        return None

    def cancelled(self) -> None:
        """The caller cancelled the call (or its channel closed) before it ended."""
        self.settings.stats.add("cancelled")
