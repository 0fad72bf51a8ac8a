"""Locks that survive ``os.fork()``.

A child forked while another thread of the parent held a lock inherits it
held, by a thread that does not exist in the child: its first call would
deadlock. Objects whose lock must work in a child (buckets, counters, retry
budgets) register here, and the child gets fresh locks for all of them.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

__all__ = ["at_fork", "register", "register_renewal"]

#: Objects whose ``_lock`` is replaced in a forked child.
_owners: weakref.WeakSet[Any] = weakref.WeakSet()
#: Objects with several locks, and the function (taking the object) that renews them.
_renewers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
#: Functions run in a forked child (module-level locks).
_hooks: list[Any] = []


def register(owner: Any) -> threading.Lock:
    """A new lock for ``owner._lock``, replaced in every forked child."""
    _owners.add(owner)
    return threading.Lock()


def register_renewal(owner: Any, renew: Any) -> None:
    """Call ``renew(owner)`` in every forked child, for an object with several (or shared) locks.

    ``renew`` must not hold ``owner`` itself (pass ``Class.method``), so that
    registering does not keep the object alive.
    """
    _renewers[owner] = renew


def at_fork(hook: Any) -> None:
    """Run ``hook()`` in every forked child (to renew a module's own locks)."""
    _hooks.append(hook)


def _renew() -> None:
    for owner in list(_owners):
        owner._lock = threading.Lock()
    for owner, renew in list(_renewers.items()):
        renew(owner)
    for hook in _hooks:
        hook()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew)
