"""The future behind one intercepted unary-unary call (sync grpc).

grpc hands the interceptor a *continuation* and expects a ``Call`` that is
also a ``Future`` back. For ``stub.M(req)`` and ``stub.M.with_call(req)`` the
continuation blocks and *returns* the outcome (a failed one included, it does
not raise); for ``stub.M.future(req)`` it returns a pending future. The
interceptor cannot tell which style it serves, so every call is this one
object, driven as a small state machine:

    acquire token -> (wait) -> send attempt -> classify -> (back off) -> acquire ...

A step that must wait is parked with a due time. Whoever gets there first runs
it: a thread blocked in :meth:`ThrottledCall.result` (the blocking styles, so
their RPC runs on the caller's thread as it would without us), or the timer
thread (``.future()``, which therefore returns at once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from ..buckets import Bucket, BucketReservation
from ..events import GaveUp, emit
from . import _bases, _timers
from ._attempts import CallDetails, CallState, Settings
from ._finished import LocalRpcError

__all__ = ["ThrottledCall", "deadline_error"]

_log = logging.getLogger("grpc_throttle.interceptors")


def deadline_error(wait: float | None, remaining: float) -> LocalRpcError:
    what = "a token" if wait is None else f"{wait:.3f}s for a token"
    return LocalRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"grpc-throttle: waiting for {what} would pass the call's deadline "
        f"({max(remaining, 0.0):.3f}s left); the call was not sent",
    )


class ThrottledCall(grpc.Call, _bases.Future):
    """One logical unary call: all its attempts, as a single Call and Future."""

    def __init__(
        self,
        settings: Settings,
        bucket: Bucket,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        details: CallDetails,
        request: Any,
        tokens: float,
    ) -> None:
        self._settings = settings
        self._bucket = bucket
        self._continuation = continuation
        self._details = details
        self._request = request
        self._tokens = tokens
        self._state = CallState(settings, details.timeout)
        #: Guards everything below; the condition is made on first wait.
        self._lock = threading.Lock()
        self._cond: threading.Condition | None = None
        self._waiters = 0
        #: The next step, once it is due (monotonic seconds), and its timer.
        self._step: Callable[[], None] | None = None
        self._step_due = 0.0
        self._timer: _timers.Timer | None = None
        #: Tokens held while waiting to send.
        self._reservation: BucketReservation | None = None
        #: The attempt in flight or, once done, the one whose outcome we kept.
        self._inner: Any = None
        #: The last throttled attempt (handed back unchanged on give-up).
        self._throttled: Any = None
        #: The bucket's adaptation round when the current attempt got its token.
        self._round = 0
        self._done = False
        self._cancelled = False
        self._response: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        self._rpc_callbacks: list[Callable[[], None]] = []

    # -- the state machine -------------------------------------------------

    def start(self) -> ThrottledCall:
        self._settings.stats.add("calls")
        self._acquire()
        return self

    def resume(self, reservation: BucketReservation | None, first_outcome: Any = None, round: int = 0) -> ThrottledCall:
        """Take over a call that a faster path began (see ``channel.py``).

        Args:
            reservation: The first attempt's reservation, when it must still be
                waited out.
            first_outcome: The first attempt's finished outcome, when it was
                sent already and came back throttled.
            round: The first attempt's reservation round, with ``first_outcome``.
        """
        if first_outcome is not None:  # counted as a call and an attempt already
            self._state.attempt = 1
            self._round = round
            self._on_attempt_done(first_outcome)
        else:
            self._settings.stats.add("calls")
            self._acquire(reservation)
        return self

    def _acquire(self, reservation: BucketReservation | None = None) -> None:
        remaining = self._state.remaining()
        if reservation is None:
            try:
                reservation = self._bucket.reserve(self._tokens, max_wait=max(remaining, 0.0))
            except Exception as error:  # e.g. BucketUnavailableError under on_failure="fail"
                self._finish(None, error, None)
                return
        if reservation is None:
            self._give_up_on_deadline(None, remaining)
            return
        self._round = getattr(reservation, "round", 0)
        if reservation.delay <= 0:
            self._send()
            return
        self._settings.stats.add("token_wait_seconds", reservation.delay)
        with self._lock:
            if self._done:
                cancelled = True
            else:
                cancelled = False
                self._reservation = reservation
                self._park(reservation.delay, self._send)
        if cancelled:
            reservation.cancel()

    def _send(self) -> None:
        reservation = self._reservation
        if reservation is not None and self._wait_longer(reservation):
            return
        with self._lock:
            if self._done:
                return
            self._reservation = None
            self._state.attempt += 1
            attempt = self._state.attempt
        stats = self._settings.stats
        stats.add("attempts")
        if attempt > 1:
            stats.add("retries")
        timeout = self._state.attempt_timeout()
        if timeout is not None and timeout <= 0:
            self._give_up_on_deadline(0.0, 0.0)
            return
        try:
            inner = self._continuation(self._details._replace(timeout=timeout), self._request)
        except Exception as error:
            self._finish(None, error, None)
            return
        with self._lock:
            if self._done:  # cancelled while the continuation ran
                inner.cancel()
                return
            self._inner = inner
        inner.add_done_callback(self._on_attempt_done)

    def _wait_longer(self, reservation: BucketReservation) -> bool:
        """Park again when the bucket's rate was cut while we waited (see due_in)."""
        due_in = getattr(reservation, "due_in", None)
        if due_in is None:
            return False
        wait: float = due_in()
        if wait <= 0:
            return False
        remaining = self._state.remaining()
        if wait > remaining:
            with self._lock:
                if self._done:
                    return True
                self._reservation = None
            reservation.cancel()
            self._give_up_on_deadline(wait, remaining)
            return True
        self._settings.stats.add("token_wait_seconds", wait)
        with self._lock:
            if not self._done:
                self._park(wait, self._send)
        return True

    def _on_attempt_done(self, inner: Any) -> None:
        # Runs on grpc's callback thread for .future(): anything raised here
        # would be logged by grpc and the call would never finish. Whatever
        # goes wrong (a user hook, a bucket), the call ends with that error.
        try:
            self._after_attempt(inner)
        except Exception as error:
            _log.exception("grpc-throttle: handling an answer to %s failed", _name(self._details.method))
            self._finish(None, error, inner)

    def _after_attempt(self, inner: Any) -> None:
        if self._done:
            return
        try:
            error = inner.exception()
        except grpc.FutureCancelledError:
            # Cancelled underneath us (channel closed), not by our caller.
            self._finish(None, LocalRpcError(grpc.StatusCode.CANCELLED, "attempt cancelled"), inner)
            return
        settings = self._settings
        throttle = settings.throttle
        if error is not None:
            if not (isinstance(error, grpc.RpcError) and throttle.error_throttled(error)):
                self._finish(None, error, inner)  # a plain failure: no signal either way
                return
        else:
            response = inner.result()
            if not throttle.response_throttled(response):
                settings.on_answer(False, self._round)
                self._finish(response, None, inner)
                return
        settings.on_answer(True, self._round)
        self._throttled = inner
        delay = self._state.delay_before_retry(self._details.method, _trailing_metadata(inner))
        if delay is None:
            self._give_up()
            return
        _log.debug(
            "grpc-throttle: %s throttled on attempt %d; retrying in %.3fs",
            self._details.method,
            self._state.attempt,
            delay,
        )
        with self._lock:
            if not self._done:
                self._park(delay, self._acquire)

    def _give_up(self) -> None:
        inner = self._throttled
        error = inner.exception()
        self._finish(None if error is not None else inner.result(), error, inner)

    def _give_up_on_deadline(self, wait: float | None, remaining: float) -> None:
        if self._throttled is not None:
            self._settings.stats.add("give_ups")
            if self._settings.hooks:
                emit(self._settings.hooks, GaveUp(_name(self._details.method), self._state.attempt, "deadline"))
            self._give_up()
        else:
            self._settings.stats.add("deadline_rejections")
            self._finish(None, deadline_error(wait, remaining), None)

    def _park(self, delay: float, step: Callable[[], None]) -> None:
        # Lock held. The timer fires even when a waiter will run the step, so
        # that a waiter leaving early (result(timeout)) cannot strand it.
        self._step = step
        self._step_due = time.monotonic() + delay
        self._timer = _timers.call_later(delay, self._on_timer)
        if self._cond is not None:
            self._cond.notify_all()

    def _claim_due_step(self) -> Callable[[], None] | None:
        # Lock held.
        step = self._step
        if step is None or time.monotonic() < self._step_due:
            return None
        self._step = None
        self._timer = None
        return step

    def _on_timer(self) -> None:
        with self._lock:
            if self._waiters:  # a thread in result() runs it, on its own stack
                if self._cond is not None:
                    self._cond.notify_all()
                return
            step = self._claim_due_step()
        if step is not None:
            step()

    def _finish(self, response: Any, error: BaseException | None, inner: Any) -> None:
        with self._lock:
            if self._done:
                return
            self._response = response
            self._error = error
            if inner is not None:
                self._inner = inner
            self._step = None
            self._done = True
            if self._cond is not None:
                self._cond.notify_all()
            callbacks, self._callbacks = self._callbacks, []
            rpc_callbacks, self._rpc_callbacks = self._rpc_callbacks, []
        self._run_callbacks(callbacks, rpc_callbacks)

    def _run_callbacks(self, callbacks: list[Callable[[Any], None]], rpc_callbacks: list[Callable[[], None]]) -> None:
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                _log.exception("grpc-throttle: a done-callback raised")
        for rpc_callback in rpc_callbacks:
            try:
                rpc_callback()
            except Exception:
                _log.exception("grpc-throttle: an RPC callback raised")

    # -- grpc.Future -------------------------------------------------------

    def _wait(self, timeout: float | None) -> None:
        if self._done:
            return
        end = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._cond is None:
                self._cond = threading.Condition(self._lock)
            cond = self._cond
            self._waiters += 1
        try:
            while True:
                with self._lock:
                    if self._done:
                        return
                    step = self._claim_due_step()
                    if step is None:
                        now = time.monotonic()
                        if end is not None and now >= end:
                            raise grpc.FutureTimeoutError()
                        waits = [t for t in (end, self._step_due if self._step else None) if t is not None]
                        cond.wait(min(waits) - now if waits else None)
                        continue
                step()
        finally:
            with self._lock:
                self._waiters -= 1
                if not self._waiters and self._step is not None and time.monotonic() >= self._step_due:
                    self._timer = _timers.call_later(0, self._on_timer)

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._cancelled:
            raise grpc.FutureCancelledError()
        if self._error is not None:
            raise self._error
        return self._response

    def exception(self, timeout: float | None = None) -> BaseException | None:  # type: ignore[override]
        self._wait(timeout)
        if self._cancelled:
            raise grpc.FutureCancelledError()
        return self._error

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return None if error is None else error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        with self._lock:
            if not self._done:
                self._callbacks.append(fn)
                return
        fn(self)

    def cancel(self) -> bool:
        with self._lock:
            if self._done:
                return False
            self._done = self._cancelled = True
            self._step = None
            timer, self._timer = self._timer, None
            reservation, self._reservation = self._reservation, None
            inner = self._inner
            if self._cond is not None:
                self._cond.notify_all()
            callbacks, self._callbacks = self._callbacks, []
            rpc_callbacks, self._rpc_callbacks = self._rpc_callbacks, []
        self._settings.stats.add("cancelled")
        if timer is not None:
            timer.cancel()
        if reservation is not None:
            reservation.cancel()
        if inner is not None:
            inner.cancel()
        self._run_callbacks(callbacks, rpc_callbacks)
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def running(self) -> bool:
        return not self._done

    def done(self) -> bool:
        return self._done

    # -- grpc.Call (the last attempt's, once there is one) ------------------

    def initial_metadata(self) -> Any:
        return self._inner.initial_metadata() if self._inner is not None else ()

    def trailing_metadata(self) -> Any:
        return self._inner.trailing_metadata() if self._inner is not None else ()

    def code(self) -> grpc.StatusCode:
        if self._cancelled:
            return grpc.StatusCode.CANCELLED
        if self._inner is not None:
            return self._inner.code()  # type: ignore[no-any-return]
        error = self._error
        return error.code() if isinstance(error, LocalRpcError) else grpc.StatusCode.UNKNOWN

    def details(self) -> str | None:  # type: ignore[override]  # None before any attempt, like grpc
        if self._cancelled:
            return "Cancelled by the caller"
        if self._inner is not None:
            return self._inner.details()  # type: ignore[no-any-return]
        return self._error.details() if isinstance(self._error, LocalRpcError) else None

    def is_active(self) -> bool:
        return not self._done

    def time_remaining(self) -> float | None:  # type: ignore[override]  # None: no deadline, like grpc
        remaining = self._state.remaining()
        return None if remaining == float("inf") else max(0.0, remaining)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if self._done:
                return False
            self._rpc_callbacks.append(callback)
            return True

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "done" if self._done else "pending"
        return f"<ThrottledCall {self._details.method} {state} attempts={self._state.attempt}>"


def _trailing_metadata(outcome: Any) -> Any:
    try:
        return outcome.trailing_metadata()
    except Exception:  # an outcome without trailers (e.g. a raised non-gRPC error)
        return None


def _name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method
