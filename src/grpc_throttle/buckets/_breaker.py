"""A circuit breaker for a shared store: stop paying its timeout while it is down.

Pure state under a lock, with an injected clock and no I/O: the sync and the
asyncio Redis buckets both drive one. Closed, every call goes to the store.
The first failure opens it: calls skip the store for ``cooldown`` seconds,
then exactly one call probes it. A probe that answers closes the breaker; one
that fails opens it for another ``cooldown``. Each change between "shared" and
"down" is logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .. import _fork

__all__ = ["Breaker"]


class Breaker:
    """Decides whether the next call may use the store.

    Args:
        name: What the log lines call the store (never a secret).
        cooldown: Seconds to keep away from the store after a failure.
        clock: Monotonic clock in seconds.
        logger: Where transitions are logged.
        fallback: What calls do while the store is down, for the log line.

    Example:
        >>> breaker = Breaker("redis key 'k'", 2.0, lambda: 0.0, logging.getLogger(), "allow")
        >>> breaker.allow()
        True
    """

    def __init__(
        self,
        name: str,
        cooldown: float,
        clock: Callable[[], float],
        logger: logging.Logger,
        fallback: str,
    ) -> None:
        #: Store name used in log lines.
        self._name = name
        #: Seconds the breaker stays open after a failure.
        self._cooldown = cooldown
        #: Monotonic clock in seconds.
        self._clock = clock
        #: Destination of the transition log lines.
        self._logger = logger
        #: The failure policy in force while open, for the log line.
        self._fallback = fallback
        #: Guards the fields below; held for a few comparisons only.
        self._lock = _fork.register(self)
        #: When the breaker may next let a probe through; None while closed.
        self._open_until: float | None = None
        #: True while one probe is in flight (others keep away meanwhile).
        self._probing = False
        #: "ExceptionType: message" of the last failure, for error messages.
        self.last_error = ""

    @property
    def closed(self) -> bool:
        """True while calls go to the store."""
        return self._open_until is None

    def allow(self) -> bool:
        """Whether this call may use the store (False: apply the failure policy)."""
        if self._open_until is None:  # the common case, without the lock
            return True
        with self._lock:
            if self._open_until is None:
                return True
            if self._probing or self._clock() < self._open_until:
                return False
            self._probing = True
            return True

    def succeeded(self) -> None:
        """The store answered: close the breaker."""
        if self._open_until is None:  # the common case, without the lock
            return
        with self._lock:
            if self._open_until is None:
                return
            self._open_until = None
            self._probing = False
        self._logger.info("%s is reachable again: back to the shared bucket", self._name)

    def abandoned(self) -> None:
        """The call ended without an answer either way (e.g. it was cancelled).

        A probe that never finished must not keep the breaker open for good:
        the next call may probe instead.
        """
        if self._open_until is not None:
            with self._lock:
                self._probing = False

    def failed(self, error: BaseException) -> None:
        """The store failed or timed out: open the breaker for ``cooldown`` seconds."""
        with self._lock:
            self.last_error = f"{type(error).__name__}: {error}"
            was_closed = self._open_until is None
            self._open_until = self._clock() + self._cooldown
            self._probing = False
        if was_closed:
            self._logger.warning(
                "%s is unavailable (%s); on_failure=%r for the next %gs, then probing",
                self._name,
                self.last_error,
                self._fallback,
                self._cooldown,
            )
        else:
            self._logger.debug("%s is still unavailable (%s)", self._name, self.last_error)
