"""Every Redis bucket operation once, as a sans-io step that the sync and asyncio buckets drive.

A step is a generator. It yields a command (:class:`Eval`: run a script;
:class:`Load`: load one; :data:`KEY_TYPE`: ask what the key holds), is sent
the reply or thrown the exception the command raised, and returns the
operation's result. Everything between the caller and the socket is decided
here, once: the breaker, what an error means (``_redis_errors``), the script
reloads, the failure policy and the handoff to the fallback, and what each
reply changes. ``redis.py`` and ``redis_aio.py`` only run the commands, each
with one small loop (:func:`drive`, :func:`adrive`).

Example:
    >>> step = bucket._reserve(1.0, float("inf"))  # doctest: +SKIP
    >>> command = next(step)  # Eval(sha=..., args=(b"15.0", b"1.0"), more_keys=())
    >>> step.send(b"1 0 ...")  # StopIteration(value=RedisReservation(...))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

from ..errors import BucketUnavailableError
from ._redis_adapt import SCRIPTS, SHAS
from ._redis_base import TOO_LATE, RedisBucketBase, RedisReservation
from ._redis_errors import Verdict, classify, is_client_error, is_noscript
from ._redis_handoff import FreeReservation
from ._redis_windows import encode
from ._window import window_limits
from .local import Reservation

__all__ = ["KEY_TYPE", "Command", "Eval", "KeyType", "Load", "RedisSteps", "Step", "adrive", "drive"]

T = TypeVar("T")

#: Script loads tried before a call is left to fail: another SCRIPT FLUSH may
#: come between the load and the call.
LOAD_TRIES = 3


@dataclass(frozen=True, slots=True)
class Eval:
    """Run the script ``sha`` on the bucket's key, then ``more_keys``, with ``args``."""

    sha: str
    args: Sequence[str | bytes]
    more_keys: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Load:
    """``SCRIPT LOAD`` the script ``source`` where the key lives."""

    source: str


@dataclass(frozen=True, slots=True)
class KeyType:
    """``TYPE`` of the bucket's key (to explain a refused script)."""


#: The one KeyType command.
KEY_TYPE = KeyType()

Command: TypeAlias = Eval | Load | KeyType
#: An operation: yields commands, is sent their replies, returns its result.
Step: TypeAlias = Generator[Command, Any, T]
#: What _run returns when Redis could not be used.
DOWN: Any = object()


def drive(step: Step[T], run: Callable[[Command], Any]) -> T:
    """Run ``step`` to its end, each command through ``run``: the sync buckets' loop."""
    try:
        command = next(step)
        while True:
            try:
                reply = run(command)
            except BaseException as error:  # the step decides, even on KeyboardInterrupt
                command = step.throw(error)
            else:
                command = step.send(reply)
    except StopIteration as done:
        result: T = done.value
        return result


async def adrive(step: Step[T], run: Callable[[Command], Awaitable[Any]]) -> T:
    """:func:`drive` for the asyncio buckets: each command through the coroutine ``run``."""
    try:
        command = next(step)
        while True:
            try:
                reply = await run(command)
            except BaseException as error:  # cancellation too: the step tells Redis's breaker
                command = step.throw(error)
            else:
                command = step.send(reply)
    except StopIteration as done:
        result: T = done.value
        return result


class RedisSteps(RedisBucketBase):
    """The Redis bucket's operations as steps, for the sync and asyncio buckets to drive."""

    # -- operations ------------------------------------------------------

    def _reserve(self, tokens: float, max_wait: float) -> Step[RedisReservation | Reservation | FreeReservation | None]:
        tokens, max_wait = self._check(tokens, max_wait)
        extra = 0
        if self._pool is not None:
            leased, extra = self._take_leased(tokens, max_wait)
            if leased is not None or extra == TOO_LATE:
                return leased
        args = self._reserve_args(tokens, max_wait, extra)
        reply = yield from self._run("reserve", args, self._windows_keys)
        if reply is DOWN:
            self._unless_failing()
            return self._handoff.reserve(tokens, max_wait)
        reservation = self._accept(reply, args, extra)
        if self._handoff.unreported:  # back from an outage, with limits
            yield from self._report_fallback_sends()
        return reservation

    def _report_fallback_sends(self) -> Step[None]:
        """Count the fallback's sends in Redis's windows (lua/count.lua), on Redis's clock as the last reply maps it."""
        redis_now, received = self._redis_clock
        sends = self._handoff.take_unreported(self._clock())
        if sends:
            pairs = ";".join(f"{redis_now + (when - received) * 1e6!r}:{tokens!r}" for when, tokens in sends)
            if (yield from self._run_quietly("count", [self._limits_arg, pairs], self._windows_keys)) is None:
                self._handoff.restore(sends)  # not counted: the next reservation back tries again

    def _available(self) -> Step[float]:
        args = [self._rate_arg, self._capacity_arg]
        if self._limits_arg:
            args.append(self._limits_arg)
        reply = yield from self._run("state", args, self._windows_keys)
        if reply is DOWN:
            self._unless_failing()
            return self._handoff.available(self.capacity)
        self._take_report(reply[1])
        return float(reply[0])

    def _hold_window(self, seconds: float) -> Step[float | None]:
        """Hold every process's new sends until the full window ``seconds`` long frees (lua/hold.lua).

        None (nothing held) without a limit of that window. The fallback holds
        as long; while Redis is down or refusing, it holds by its own count, and that is the answer.
        """
        matching = window_limits(self._settings.limits, seconds)
        if not matching:
            return None
        reply = yield from self._run_quietly("hold", [encode(matching)], self._windows_keys)
        with self._lock:
            if self._pool is not None:
                self._pool.clear()  # leased slots would go out during the hold
        if reply is None:
            return self._local.hold_window(seconds)
        held = max(float(reply) / 1e6, 0.0)
        self._local.hold_until(self._clock() + held)  # should Redis go down during the hold
        return held

    def _set_rate(self, value: float) -> Step[None]:
        value = self._set_pending(value)
        reply = yield from self._run("set_rate", [self._rate_arg, repr(value), self._capacity_arg])
        if reply is DOWN:
            self._unless_failing()
            return
        self._take_report(reply, value)

    def _adapt(self, name: str, args: list[str], round: int | None) -> Step[None]:
        """Run the throttle (``round``) or recover (None) script; Redis down or refusing: the fallback adapts."""
        reply = None
        try:
            reply = yield from self._run_quietly(name, args)
        finally:
            self._adapted(reply, round)

    def _due(self, reservation: RedisReservation) -> Step[float]:
        """Seconds until ``reservation`` is due, asking Redis where a cut seen since moved it."""
        args = self._due_args(reservation)
        if args is None:
            return self._left(reservation)
        reply = yield from self._run_quietly("due", args, self._windows_keys)
        return self._left(reservation) if reply is None else self._moved(reservation, reply)

    def _give_back(self, reservation: RedisReservation) -> Step[None]:
        """Tell Redis a cancelled reservation's tokens are free (best effort: they expire anyway)."""
        try:
            yield from self._run("cancel", reservation._cancel_args(), (self._holes_key, *self._windows_keys))
        except BucketUnavailableError as error:
            self._logger.debug("cancel on %r failed: %s", self.key, error)

    # -- the error ladder ------------------------------------------------

    def _run(self, name: str, args: Sequence[str | bytes], more_keys: Sequence[str] = ()) -> Step[Any]:
        """Run one script; :data:`DOWN` when Redis is (or was just found) unavailable."""
        if not self._breaker.allow():
            return DOWN
        try:
            reply = yield from self._eval(name, args, more_keys)
        except Exception as error:
            verdict = classify(error, cluster=self._cluster)
            if verdict.kind == "refused":
                self._breaker.succeeded()
                key_type = yield from self._key_type()
                raise self._store_error(error, key_type) from None
            self._judge(error, verdict)  # raises, unless Redis is down or the pool full
            return DOWN
        except BaseException:  # cancelled or interrupted: no verdict on Redis
            self._breaker.abandoned()
            raise
        self._breaker.succeeded()
        return reply

    def _run_quietly(self, name: str, args: list[str], more_keys: Sequence[str] = ()) -> Step[Any]:
        """Run a script whose failure changes nothing for the caller: None when down or refused (logged)."""
        try:
            reply = yield from self._run(name, args, more_keys)
        except BucketUnavailableError as error:
            self._logger.debug("%s on %r failed: %s", name, self.key, error)
            return None
        return None if reply is DOWN else reply

    def _eval(self, name: str, args: Sequence[str | bytes], more_keys: Sequence[str]) -> Step[Any]:
        """The script's reply, loading the script where Redis does not know it (first use, SCRIPT FLUSH)."""
        command = Eval(SHAS[name], args, more_keys)
        for _ in range(LOAD_TRIES):
            try:
                return (yield command)
            except Exception as error:
                if not is_noscript(error):
                    raise
                yield Load(SCRIPTS[name])
        return (yield command)

    def _key_type(self) -> Step[str | None]:
        """What the key holds, or None when that cannot be learnt (only to explain a refusal)."""
        try:
            kind = yield KEY_TYPE
        except Exception as error:
            if not is_client_error(error):
                raise
            return None
        return kind.decode() if isinstance(kind, bytes) else str(kind)

    def _judge(self, error: Exception, verdict: Verdict) -> None:
        """Act on an error the script call raised, as ``verdict`` (``_redis_errors``) says.

        Returns for an outage (the breaker opens: the caller falls back) and
        for a full pool (no verdict on Redis); raises for a mistake, with
        what to fix, and re-raises an unknown error. "refused" is the
        caller's: it looks at the key first (see _store_error).
        """
        if verdict.kind == "outage":
            self._fix = verdict.fix
            if verdict.fix and verdict.fix not in self._fixes_logged:
                self._fixes_logged.add(verdict.fix)  # once: on_failure hides the rest
                self._logger.error("Redis bucket %r: %s (%s: %s)", self.key, verdict.fix, type(error).__name__, error)
            self._breaker.failed(error)
            return
        if verdict.kind == "full":
            self._breaker.abandoned()
            return
        if verdict.kind == "mistake":
            self._breaker.succeeded()  # Redis answered: the setup is wrong, not Redis down
            raise BucketUnavailableError(
                f"Redis bucket {self.key!r}: {verdict.fix} ({type(error).__name__}: {error})"
            ) from None
        self._breaker.abandoned()  # not the client's error: a bug, no verdict on Redis
        raise error

    def _store_error(self, error: Exception, key_type: str | None) -> BucketUnavailableError:
        if key_type and key_type not in ("hash", "none"):
            return BucketUnavailableError(
                f"Redis key {self.key!r} holds a {key_type}, not a grpc-throttle bucket (a hash): "
                "delete it or choose another key"
            )
        return BucketUnavailableError(f"Redis refused the bucket script for {self.key!r}: {error}")

    def _unless_failing(self) -> None:
        """Redis is down: raise under ``on_failure="fail"``; the other policies go on without it."""
        if self._settings.on_failure != "fail":
            return
        fix = f"; if it persists: {self._fix}" if self._fix else ""
        raise BucketUnavailableError(
            f"Redis bucket {self.key!r} is unavailable "
            f"({self._breaker.last_error or 'breaker open'}) and on_failure='fail'{fix}"
        )
