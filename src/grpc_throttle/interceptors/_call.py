"""The future behind one intercepted unary-unary call (sync grpc).

grpc hands the interceptor a *continuation* and expects a ``Call`` that is
also a ``Future`` back. For ``stub.M(req)`` and ``stub.M.with_call(req)`` the
continuation blocks and *returns* the outcome (a failed one included, it does
not raise); for ``stub.M.future(req)`` it returns a pending future. The
interceptor cannot tell which style it serves, so every call is this one
object: the sync driver of the call's plan (``_plan.CallPlan``), which decides
every step; this object only reserves, parks, sends and keeps the outcome.

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
from . import _bases, _timers
from ._attempts import CallDetails, Settings
from ._finished import LocalRpcError
from ._plan import Backoff, CallPlan, Finish, GiveUp, Refuse, Send, Wait

__all__ = ["ThrottledCall"]

_log = logging.getLogger("grpc_throttle.interceptors")


class ThrottledCall(grpc.Call, _bases.Future):
    """One logical unary call: all its attempts, as a single Call and Future."""

    def __init__(
        self,
        settings: Settings,
        bucket: Bucket,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        details: CallDetails,
        request: Any,
        plan: CallPlan,
    ) -> None:
        self._settings = settings
        self._bucket = bucket
        self._continuation = continuation
        self._details = details
        self._request = request
        #: Every decision about this call (waits, deadline, retries, counters).
        self._plan = plan
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
        self._done = False
        self._cancelled = False
        self._response: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        self._rpc_callbacks: list[Callable[[], None]] = []
        #: Called once when the call ends (the channel's registry of pending calls).
        self._on_end: Callable[[ThrottledCall], None] | None = None

    # -- the driver: do what the plan says ---------------------------------

    def start(self) -> ThrottledCall:
        """Begin: take a token (or refuse at once when the deadline has passed)."""
        self._acquire()
        return self

    def take_over(self, action: Any, reservation: BucketReservation | None) -> ThrottledCall:
        """Go on from a step the fast path began: ``action`` is its plan's answer to ``reservation``."""
        self._reservation = reservation
        self._act(action)
        return self

    def take_over_throttled(
        self, outcome: Any, trailing_metadata: Any, answer: Any = True, response: Any = None
    ) -> ThrottledCall:
        """Go on from a first attempt the fast path sent and saw answered over quota (``answer``)."""
        self._inner = outcome
        self._act_on_answer(outcome, response, answer, trailing_metadata)
        return self

    def _acquire(self) -> None:
        plan = self._plan
        max_wait = plan.reserve_wait()
        if max_wait is None:
            self._act(plan.expired())
            return
        try:
            reservation = self._bucket.reserve(plan.tokens, max_wait=max_wait)
        except Exception as error:  # e.g. BucketUnavailableError under on_failure="fail"
            self._finish(None, error, None)
            return
        with self._lock:
            if self._done:
                cancelled = True
            else:
                cancelled = False
                self._reservation = reservation
        if cancelled:
            if reservation is not None:
                reservation.cancel()
            return
        self._act(plan.reserved(reservation))

    def _woken(self) -> None:
        reservation = self._reservation
        try:
            due_in = 0.0 if reservation is None else self._bucket.due_in(reservation)
        except Exception as error:
            self._finish(None, error, None)
            return
        self._act(self._plan.woken(due_in))

    def _act(self, action: Any) -> None:
        if isinstance(action, Send):
            self._send(action.timeout)
        elif isinstance(action, Wait):
            with self._lock:
                if not self._done:
                    self._park(action.delay, self._woken)
        elif isinstance(action, Backoff):
            _log.debug("grpc-throttle: %s throttled; retrying in %.3fs", self._plan.method, action.delay)
            with self._lock:
                if not self._done:
                    self._park(action.delay, self._acquire)
        elif isinstance(action, Refuse):
            self._drop_reservation()
            self._finish(None, action.error, None)
        elif isinstance(action, GiveUp):
            self._drop_reservation()
            self._give_up()
        else:  # pragma: no cover - the plan has no other actions here
            raise AssertionError(action)

    def _drop_reservation(self) -> None:
        with self._lock:
            reservation, self._reservation = self._reservation, None
        if reservation is not None:
            reservation.cancel()

    def _send(self, timeout: float | None) -> None:
        with self._lock:
            if self._done:
                return
            self._reservation = None
        details = self._details
        details = details._replace(timeout=timeout, metadata=self._settings.with_metadata(details.metadata))
        try:
            inner = self._continuation(details, self._request)
        except Exception as error:
            self._finish(None, error, None)
            return
        with self._lock:
            if self._done:  # cancelled while the continuation ran
                inner.cancel()
                return
            self._inner = inner
        inner.add_done_callback(self._on_attempt_done)

    def _on_attempt_done(self, inner: Any) -> None:
        # Runs on grpc's callback thread for .future(): anything raised here
        # would be logged by grpc and the call would never finish. Whatever
        # goes wrong (a user hook, a bucket), the call ends with that error.
        try:
            self._after_attempt(inner)
        except Exception as error:
            _log.exception("grpc-throttle: handling an answer to %s failed", self._plan.method)
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
        throttle = self._settings.throttle
        response = None
        if error is not None:
            if not (isinstance(error, grpc.RpcError) and throttle.error_throttled(error)):
                self._finish(None, error, inner)  # a plain failure: no signal either way
                return
            answer: Any = True
        else:
            response = inner.result()
            answer = throttle.quota_answer(response)
        self._act_on_answer(inner, response, answer, _trailing_metadata(inner) if answer else None)

    def _act_on_answer(self, inner: Any, response: Any, answer: Any, trailing_metadata: Any) -> None:
        action = self._plan.answered(answer, trailing_metadata)
        if isinstance(action, Finish):
            self._finish(response, None, inner)
            return
        self._throttled = inner
        self._act(action)

    def _give_up(self) -> None:
        inner = self._throttled
        if inner is None:  # pragma: no cover - GiveUp follows a throttled answer
            raise AssertionError("give-up without a throttled answer")
        error = inner.exception()
        self._finish(None if error is not None else inner.result(), error, inner)

    def close(self, error: LocalRpcError) -> None:
        """End the call with ``error`` unless it ended already (its channel closed)."""
        with self._lock:
            if self._done:
                return
            timer, self._timer = self._timer, None
            inner = self._inner
        self._drop_reservation()
        if timer is not None:
            timer.cancel()
        self._finish(None, error, None)
        if inner is not None:
            inner.cancel()

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
            elif isinstance(error, LocalRpcError):
                self._inner = None  # the call's outcome is ours, not an attempt's
            self._step = None
            self._done = True
            if self._cond is not None:
                self._cond.notify_all()
            callbacks, self._callbacks = self._callbacks, []
            rpc_callbacks, self._rpc_callbacks = self._rpc_callbacks, []
            on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(self)
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
            on_end, self._on_end = self._on_end, None
        self._plan.cancelled()
        if on_end is not None:
            on_end(self)
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

    # -- grpc.Call: the final attempt's. Like grpc's, these block until the
    # call has ended, so a pending .future() never answers placeholders and a
    # call backing off never shows the throttled attempt's values early.

    def initial_metadata(self) -> Any:
        self._wait(None)
        return self._inner.initial_metadata() if self._inner is not None else ()

    def trailing_metadata(self) -> Any:
        self._wait(None)
        return self._inner.trailing_metadata() if self._inner is not None else ()

    def code(self) -> grpc.StatusCode:
        self._wait(None)
        if self._cancelled:
            return grpc.StatusCode.CANCELLED
        if self._inner is not None:
            return self._inner.code()  # type: ignore[no-any-return]
        error = self._error
        return error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN

    def details(self) -> str | None:  # type: ignore[override]
        self._wait(None)
        if self._cancelled:
            return "Cancelled by the caller"
        if self._inner is not None:
            return self._inner.details()  # type: ignore[no-any-return]
        error = self._error
        return error.details() if isinstance(error, grpc.Call) else str(error)

    def is_active(self) -> bool:
        return not self._done

    def time_remaining(self) -> float | None:  # type: ignore[override]  # None: no deadline, like grpc
        remaining = self._plan.remaining()
        return None if remaining == float("inf") else max(0.0, remaining)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if self._done:
                return False
            self._rpc_callbacks.append(callback)
            return True

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "done" if self._done else "pending"
        return f"<ThrottledCall {self._details.method} {state} attempts={self._plan.attempt}>"


def _trailing_metadata(outcome: Any) -> Any:
    try:
        return outcome.trailing_metadata()
    except Exception:  # an outcome without trailers (e.g. a raised non-gRPC error)
        return None


def _name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method
