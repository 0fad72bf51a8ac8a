"""What an error from Redis means for a bucket: an outage to ride out, or a mistake to fix.

Pure and I/O-free. redis-py turns Redis's error replies into exception classes
(``MOVED`` into ``MovedError``, ``WRONGPASS`` into ``AuthenticationError``, ...)
and strips the reply's code from the message, so errors are told apart by
class, never by the words of a message. Classes are matched by name along the
error's MRO, in the modules of redis-py and of its fork valkey-py (whose
``valkey.exceptions`` has the same names and hierarchy), so that either
client's errors classify alike without importing valkey.

Example:
    >>> from redis import exceptions
    >>> classify(exceptions.TimeoutError("Timeout reading from socket")).kind
    'outage'
    >>> classify(exceptions.MovedError("3999 127.0.0.1:6381"), cluster=False).kind
    'mistake'
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Literal

from ._redis_config import acl_rules

__all__ = ["Kind", "Verdict", "classify", "is_client_error", "is_error_reply", "is_noscript"]

#: What to do with an error:
#:
#: * ``"outage"``: Redis is unreachable or unable for now; waiting fixes it.
#:   The bucket's ``on_failure`` applies.
#: * ``"mistake"``: the setup is wrong and waiting will not fix it; raised
#:   whatever ``on_failure`` says, with :attr:`Verdict.fix` saying what to fix.
#: * ``"refused"``: any other error reply (a key of the wrong type, a script
#:   error): raised, with what the bucket can tell about the key.
#: * ``"full"``: the bucket's own connection pool is full; no verdict on Redis.
#: * ``"unknown"``: not an error of the Redis client at all (a bug): re-raised as it is.
#:
#: An error of no client class raised from inside the client's own code (a bug
#: of the client, e.g. redis-py 8's cluster client meeting ``ASK`` to a primary
#: that holds no slot yet raises ``AttributeError``) is an outage: the calls
#: must go on, and the fix is logged once.
Kind = Literal["outage", "mistake", "refused", "full", "unknown"]

#: Modules whose exception classes are matched by name.
_CLIENT_MODULES = ("redis", "valkey")

_AUTH = (
    "Redis refused the credentials: check the username and password of the client "
    "(or the URL, redis://user:password@host:port)"
)
_NOPERM = (
    "the Redis user lacks a permission the bucket needs (its scripts' commands count too): "
    f"ACL SETUSER <user> {acl_rules()} (README, 'Redis deployments')"
)
_READONLY = (
    "Redis answered READONLY: the client points at a read-only replica; point it at the primary "
    "(a failover causes this for a moment too, which is why it counts as an outage)"
)
_MOVED = (
    "this Redis is a cluster node that does not hold the bucket's key (MOVED/ASK): pass a "
    "redis.cluster.RedisCluster (or redis.asyncio.cluster.RedisCluster) as the client"
)
_CLIENT_BUG = (
    "the Redis client library failed inside its own code (a bug of the client, not of the setup); "
    "the bucket treats it as an outage: upgrade the client if it persists"
)
_TLS = (
    "the Redis server's TLS certificate did not verify: give the client the CA that signed it "
    "(ssl_ca_certs=...) and connect by a host name the certificate names"
)

#: Outages, by class name; the first name found along the MRO decides.
_OUTAGES = frozenset(
    {
        "ConnectionError",
        "TimeoutError",
        "BusyLoadingError",
        "ClusterDownError",
        "MasterDownError",
        "TryAgainError",
        "ClusterError",
        "SlotNotCoveredError",
        "OutOfMemoryError",  # memory frees up as keys expire
    }
)
#: Mistakes, by class name, with what to fix.
_MISTAKES = {
    "AuthenticationError": _AUTH,
    "AuthenticationWrongNumberOfArgsError": _AUTH,
    "AuthorizationError": _AUTH,
    "NoPermissionError": _NOPERM,
}
#: Error codes of replies redis-py raises as a bare ``ResponseError`` (it maps
#: no class to them, and then keeps the code as the message's first word):
#: a script running too long elsewhere, too few replicas for a write.
_UNMAPPED_OUTAGE_CODES = ("BUSY", "NOREPLICAS")
#: The same for redirections: a plain client of redis-py 5.0 raises ``MOVED``
#: and ``ASK`` as a bare ``ResponseError`` (later versions as ``MovedError``, ``AskError``).
_UNMAPPED_REDIRECTS = ("MOVED", "ASK")
#: The one mistake Redis (7.0, and Valkey) reports with no code of its own: an ACL
#: user may run EVALSHA but not a command or key inside the script. The reply is a
#: plain ``ERR`` whose text is all there is to go by (checked on redis-server 7.0).
_SCRIPT_NOPERM = "The user executing the script can't"


@dataclass(frozen=True)
class Verdict:
    """How a bucket treats an error."""

    #: What to do (see :data:`Kind`).
    kind: Kind
    #: What the user should fix; for an outage that a mistake causes too
    #: (``READONLY``), logged at ERROR once per bucket. Empty when nothing to fix.
    fix: str = ""


def classify(error: BaseException, *, cluster: bool = False) -> Verdict:
    """Classify ``error``, raised by a Redis client while running a bucket script.

    Args:
        error: What the client raised.
        cluster: True when the bucket talks through a Redis Cluster client, which
            follows MOVED and ASK itself: one that still surfaces means the
            cluster is resharding or failing over (an outage); a plain client
            meeting one is pointed at the wrong node of a cluster (a mistake).
    """
    if _tls_verify_failed(error):
        return Verdict("mistake", _TLS)
    for name in _client_class_names(error):
        if name == "MaxConnectionsError":
            return Verdict("full")
        if name in _MISTAKES:
            return Verdict("mistake", _MISTAKES[name])
        if name == "ReadOnlyError":
            return Verdict("outage", _READONLY)
        if name in ("MovedError", "AskError"):
            return Verdict("outage") if cluster else Verdict("mistake", _MOVED)
        if name in _OUTAGES:
            return Verdict("outage")
        if name == "ResponseError":
            if _SCRIPT_NOPERM in str(error):
                return Verdict("mistake", _NOPERM)
            first = str(error).split(" ", 1)[0]
            if first in _UNMAPPED_REDIRECTS:  # redis-py 5.0 maps them only in its cluster client
                return Verdict("outage") if cluster else Verdict("mistake", _MOVED)
            return Verdict("outage") if first in _UNMAPPED_OUTAGE_CODES else Verdict("refused")
        if name == "RedisError":
            return Verdict("refused")
    if isinstance(error, (OSError, asyncio.TimeoutError)):  # distinct classes on Python 3.10
        return Verdict("outage")
    if _raised_by_client(error):
        return Verdict("outage", _CLIENT_BUG)
    return Verdict("unknown")


def is_error_reply(error: BaseException) -> bool:
    """True for an error reply of Redis (the connection stays usable), redis-py's or valkey-py's."""
    return "ResponseError" in _client_class_names(error)


def is_noscript(error: BaseException) -> bool:
    """True for ``NOSCRIPT``: Redis does not know the script (first use, or after SCRIPT FLUSH)."""
    return "NoScriptError" in _client_class_names(error)


def is_client_error(error: BaseException) -> bool:
    """True for any error of a Redis client library (not a bug elsewhere)."""
    return bool(_client_class_names(error))


def _client_class_names(error: BaseException) -> list[str]:
    """Names of the classes along ``error``'s MRO that a Redis client module defines, most specific first."""
    return [cls.__name__ for cls in type(error).__mro__ if cls.__module__.split(".", 1)[0] in _CLIENT_MODULES]


def _raised_by_client(error: BaseException) -> bool:
    """True when the innermost frame that raised ``error`` is in a Redis client module."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    return isinstance(module, str) and module.split(".", 1)[0] in _CLIENT_MODULES


def _tls_verify_failed(error: BaseException) -> bool:
    """True when a certificate check failed: redis-py wraps it in a ConnectionError, the cause kept."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
