"""Rate adaptation for the Redis bucket: one CUBIC curve per key, shared in Redis.

:class:`~grpc_throttle.TokenBucket` keeps its curve (``_cubic``) under a lock;
a Redis bucket keeps it in the key's hash (``rd wm ld k lm`` beside ``eff``,
see ``lua/_common.lua``) and moves it with ``lua/throttle.lua`` and
``lua/recover.lua`` on Redis's clock, so that every process on the key slows
down together, a throttle signal counts once per round across processes, and
one process's recovery cannot undo another's decrease.

Every reply carries the curve's state, and :class:`SharedCurve` is this
process's copy of it. That copy is what keeps the common cases free: a success
while the curve is at the configured rate costs nothing, a success that would
move the rate by less than ``_cubic.MIN_CHANGE`` costs nothing either (the copy
computes the curve locally), and a throttle signal of a round already counted
is dropped without a round trip.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, NamedTuple

from ..events import EventHook, RateChanged, emit
from . import _cubic
from ._base import Listeners
from ._breaker import Breaker
from ._cubic import AdaptiveRate, CubicState
from ._redis_config import SCRIPTS as _BASE_SCRIPTS
from ._redis_config import Settings
from .local import TokenBucket

__all__ = ["SCRIPTS", "SHAS", "SharedAdaptation", "SharedCurve"]

_LUA = resources.files(__package__) / "lua"
#: Every script a Redis bucket runs (``_common.lua`` prepended), by name.
SCRIPTS = {
    **_BASE_SCRIPTS,
    **{
        name: (_LUA / "_common.lua").read_text("utf-8") + (_LUA / f"{name}.lua").read_text("utf-8")
        for name in ("throttle", "recover")
    },
}
#: Their SHA1 digests, as EVALSHA names them.
SHAS = {name: hashlib.sha1(src.encode("utf-8")).hexdigest() for name, src in SCRIPTS.items()}

#: Relative differences below this are float noise, not a change of rate.
_SAME = 1e-9


class SharedCurve:
    """This process's copy of a key's shared rate and adaptation curve.

    Updated from every Redis reply; replies are taken in the order of their
    Redis time, so that a slow reply cannot bring back an older rate.

    Args:
        adaptive: The curve's constants, or None when this process does not adapt.
        rate: The rate in force until the first reply.
        lock: The bucket's lock, which :meth:`observe` expects held.

    Example:
        >>> import threading
        >>> SharedCurve(AdaptiveRate(), 10.0, threading.Lock()).round
        0
    """

    def __init__(self, adaptive: AdaptiveRate | None, rate: float, lock: threading.Lock) -> None:
        #: The curve's constants (None: this process reports no signals).
        self.adaptive = adaptive
        #: The rate in force, tokens/s, as of the newest reply.
        self.rate = rate
        #: The key's round as of the newest reply.
        self.round = 0
        #: The curve on the bucket's local clock while recovering; None at the
        #: configured rate (successes then cost nothing).
        self.curve: CubicState | None = None
        #: Called with a RateChanged whenever :attr:`rate` changes.
        self.listeners = Listeners()
        #: The bucket's lock.
        self._lock = lock
        #: Redis time (microseconds) of the newest reply taken in.
        self._seen = float("-inf")
        #: The round of a throttle signal on its way to Redis, if any.
        self._throttling: int | None = None
        #: True while a recovery update is on its way to Redis.
        self._recovering = False

    def observe(self, redis_now: float, received: float, interval: float, tail: Sequence[bytes | str]) -> float | None:
        """Take in a reply's state; the caller holds the lock.

        Args:
            redis_now: The reply's Redis time, microseconds.
            received: When the reply arrived, on the bucket's clock.
            interval: Microseconds per token at the rate in force.
            tail: The reply's ``rd [since k wm]`` fields; empty when the key
                has no adaptation state (round 0, at the configured rate).

        Returns:
            The rate before, when the reply changed it (to pass to :meth:`notify`).
        """
        if redis_now < self._seen:
            return None
        self._seen = redis_now
        old, rate = self.rate, 1e6 / interval
        self.rate = rate
        self.round = int(tail[0]) if tail else 0
        if len(tail) > 1:
            since, k, w_max = float(tail[1]), float(tail[2]), float(tail[3])
            self.curve = CubicState(rate=rate, w_max=w_max, last_decrease=received - since / 1e6, k=k)
        else:
            self.curve = None
        return old if abs(rate - old) > _SAME * old else None

    def set(self, value: float) -> float:
        """A rate set in this process (written to Redis next); the caller holds the lock.

        A rate set on purpose holds: successes do not recover from it.

        Returns:
            The rate before.
        """
        old, self.rate, self.curve = self.rate, value, None
        return old

    def notify(self, old: float | None, reason: str | None = None) -> None:
        """Tell the listeners the rate changed from ``old`` (call without the lock)."""
        new = self.rate
        if old is None or not self.listeners or abs(new - old) <= _SAME * old:
            return
        if reason is None:
            reason = "throttle" if new < old else "recovery"
        emit(self.listeners.hooks(), RateChanged(old, new, reason))  # type: ignore[arg-type]

    # -- deciding what is worth a round trip -------------------------------

    def begin_throttle(self, round: int) -> bool:
        """True when a throttle signal of ``round`` must go to Redis (then call :meth:`end_throttle`).

        Not when the round is older than the key's (counted already), nor when
        a signal of the same or a later round is on its way.
        """
        with self._lock:
            if round < self.round or (self._throttling is not None and round <= self._throttling):
                return False
            self._throttling = round
            return True

    def end_throttle(self, round: int) -> None:
        """The signal of ``round`` got its answer (or none)."""
        with self._lock:
            if self._throttling == round:
                self._throttling = None

    def begin_recovery(self, configured: float, now: float) -> bool:
        """True when a success would move the rate now (then call :meth:`end_recovery`).

        The curve computed locally says whether Redis would change the rate;
        one update at a time is in flight.
        """
        if self.curve is None or self.adaptive is None:  # the common case, without the lock
            return False
        with self._lock:
            if self._recovering or self.curve is None:
                return False
            if _cubic.on_success(self.adaptive, self.curve, configured, now) is self.curve:
                return False
            self._recovering = True
            return True

    def end_recovery(self) -> None:
        """The recovery update got its answer (or none)."""
        self._recovering = False

    def throttle_args(self, configured: float, round: int) -> list[str]:
        """Arguments of ``throttle.lua`` after the rate and capacity."""
        config = self._config()
        floor = config.floor(configured)
        fast = "1" if config.fast_convergence else "0"
        return [str(round), repr(config.beta), repr(config.scale), repr(config.headroom), repr(floor), fast]

    def recover_args(self, configured: float) -> list[str]:
        """Arguments of ``recover.lua`` after the rate and capacity."""
        config = self._config()
        return [repr(config.scale), repr(config.probe_time), repr(config.floor(configured)), repr(_cubic.MIN_CHANGE)]

    def _config(self) -> AdaptiveRate:
        if self.adaptive is None:
            raise RuntimeError("this bucket does not adapt its rate")
        return self.adaptive


class FallbackRound(NamedTuple):
    """The round of a reservation made by the local fallback, not by Redis.

    Rounds count cuts; Redis and the fallback count theirs apart, so a round
    says whose it is. A throttle of a fallback round is the fallback's signal;
    a throttle of a Redis round heard while Redis is down cuts the fallback
    once per Redis round (before, three throttles of one round cut it three
    times: 10 -> 7 -> 4.9 -> 3.43).
    """

    #: The fallback bucket's own round.
    round: int


class SharedAdaptation:
    """The adaptation half of the Redis buckets: signals in, script arguments out.

    Mixed into ``RedisBucketBase``, which sets the attributes declared here;
    the sync and asyncio buckets run the scripts and hand the replies to
    :meth:`_adapted`.
    """

    _view: SharedCurve
    _breaker: Breaker
    _local: TokenBucket
    _settings: Settings
    _rate: float
    _rate_arg: str
    _capacity_arg: str
    _clock: Callable[[], float]
    _view_lock: threading.Lock

    def _take_report(self, reply: Any, sent: float | None = None) -> None:
        raise NotImplementedError

    @property
    def adaptive(self) -> AdaptiveRate | None:
        """How the shared rate adapts to throttle signals, or None when this process reports none."""
        return self._view.adaptive

    @property
    def round(self) -> int:
        """The key's rate decreases so far, as of the last reply; reservations carry theirs.

        While Redis is down, the fallback bucket's own round.
        """
        return self._view.round if self._breaker.closed else self._local.round

    def add_listener(self, hook: EventHook) -> None:
        """Call ``hook(RateChanged(...))`` whenever this process sees the key's effective rate change.

        A hook added twice (two interceptors of this bucket sharing one
        ``on_event``) is still called once per change.
        """
        self._view.listeners.add(hook)

    def remove_listener(self, hook: EventHook) -> None:
        """Undo one :meth:`add_listener` of ``hook``; does nothing if it was not added."""
        self._view.listeners.remove(hook)

    #: The newest Redis round already applied to the fallback while Redis was down.
    _redis_round_cut_locally: int = -1

    def _throttle_args(self, round: int | FallbackRound) -> list[str] | None:
        """The throttle script's arguments, or None when no round trip is needed.

        None when the process does not adapt, the round was counted already or
        a signal of it is on its way (then :meth:`_adapted` must follow), or
        Redis is down: the fallback bucket then takes the signal.
        """
        if self._view.adaptive is None:
            return None
        if isinstance(round, FallbackRound) or not self._breaker.closed:
            self._adapt_locally(round)
            return None
        if not self._view.begin_throttle(round):
            return None
        return [self._rate_arg, self._capacity_arg, *self._view.throttle_args(self._rate, round)]

    def _recovery_args(self) -> list[str] | None:
        """The recover script's arguments, or None when a success changes nothing shared.

        Costs no lock and no round trip while the curve is at the configured
        rate, nor while the next step would be below ``_cubic.MIN_CHANGE``.
        """
        if not self._breaker.closed:
            self._adapt_locally(None)
            return None
        if not self._view.begin_recovery(self._rate, self._clock()):
            return None
        return [self._rate_arg, self._capacity_arg, *self._view.recover_args(self._rate)]

    def _adapted(self, reply: Any, round: int | None) -> None:
        """Take the throttle (``round``) or recover (None) script's reply; None if Redis was down."""
        if round is None:
            self._view.end_recovery()
        else:
            self._view.end_throttle(round)
        if reply is None:
            self._adapt_locally(round)
        else:
            self._take_report(reply)

    def _adapt_locally(self, round: int | FallbackRound | None) -> None:
        if self._settings.on_failure != "local" or self._view.adaptive is None:
            return
        if round is None:
            self._local.record_success()
        elif isinstance(round, FallbackRound):
            self._local.record_throttle(round.round)
        else:  # a Redis round, heard while Redis is down: one cut per Redis round
            with self._view_lock:
                if round <= self._redis_round_cut_locally:
                    return
                self._redis_round_cut_locally = round
            self._local.record_throttle(self._local.round)
