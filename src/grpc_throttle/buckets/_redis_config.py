"""Configuration shared by the sync and asyncio Redis buckets: settings, keys, scripts.

Pure and I/O-free, apart from reading the Lua scripts shipped in ``lua/``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from .. import _checks
from ._redis_windows import MIN_SECONDS, encode
from ._window import Limit, check_limits

#: Prefix of every Redis key grpc-throttle writes.
KEY_PREFIX = "grpc-throttle:"
#: The longest ``timeout`` accepted, seconds: a Redis round trip, not a wait (a
#: socket takes at most ~9.2e9 s, and a longer value failed at the first call).
MAX_TIMEOUT = 86_400.0
#: The largest ``lease`` accepted: slots leased per round trip, each held in memory.
MAX_LEASE = 10_000
#: What a bucket does while Redis is unreachable (see RedisTokenBucket).
FailurePolicy = Literal["local", "allow", "fail"]
_POLICIES = ("local", "allow", "fail")
#: The operations, one Lua script each, in ``lua/``; ``_common.lua`` is prepended, and
#: ``_windows.lua`` (the counts of ``limits``) too for those that take limits.
_LUA = resources.files(__package__) / "lua"
_WINDOWED = ("reserve", "cancel", "due", "state", "hold", "count")
SCRIPTS = {
    name: (_LUA / "_common.lua").read_text("utf-8")
    + ((_LUA / "_windows.lua").read_text("utf-8") if name in _WINDOWED else "")
    + (_LUA / f"{name}.lua").read_text("utf-8")
    for name in ("reserve", "cancel", "set_rate", "state", "due", "hold", "count")
}
#: Their SHA1 digests, as EVALSHA names them.
SHAS = {name: hashlib.sha1(src.encode("utf-8")).hexdigest() for name, src in SCRIPTS.items()}
#: Key patterns covering every key a bucket uses (the ``~`` patterns of an ACL user): the
#: hash ``grpc-throttle:<key>``, its holes, ``{grpc-throttle:<key>}:holes`` or, for a key
#: with a hash tag of its own, ``grpc-throttle:<key>:holes`` (see Settings.holes_key), and
#: the counts of its ``limits`` (``:windows`` in the same way).
ACL_KEY_PATTERNS = ("grpc-throttle:*", "{grpc-throttle:*")
#: Every command a bucket needs (the ``+`` commands of an ACL user): those it sends
#: (EVALSHA, SCRIPT LOAD, and TYPE to explain a refused script) and those its Lua
#: scripts run, which Redis checks against the user too. ``INFO`` (its replication
#: ID) tells a script that a failover moved the key; without it the scripts work,
#: but do not hold the schedule after a failover (see lua/_common.lua).
ACL_COMMANDS = (
    "evalsha",
    "script|load",
    "type",
    "time",
    "hget",
    "hmget",
    "hset",
    "pexpire",
    "pttl",
    "del",
    "zadd",
    "zrangebyscore",
    "zrem",
    "zremrangebyscore",
    "info",
)


def acl_rules() -> str:
    """The rules of an ACL user that may run buckets and nothing else (after ``ACL SETUSER name on >password``).

    Example:
        >>> acl_rules().split()[:2]
        ['resetkeys', '~grpc-throttle:*']
    """
    keys = " ".join(f"~{pattern}" for pattern in ACL_KEY_PATTERNS)
    return f"resetkeys {keys} resetchannels -@all " + " ".join(f"+{command}" for command in ACL_COMMANDS)


#: The bucket's pool size: no limit in practice. A bucket holds a connection
#: only for one script call, so its pool grows to the calls in flight at once;
#: redis-py 8's default of 100 would fail the 101st concurrent call with
#: MaxConnectionsError, which is no sign of an outage.
POOL_SIZE = 2**31 - 1


def hashed_key(secret: str | bytes) -> str:
    """A bucket key derived from a tenant id or API token, without storing it.

    Example:
        >>> hashed_key("my-api-key")[:2]
        'h:'
    """
    data = secret.encode() if isinstance(secret, str) else secret
    if not isinstance(data, bytes) or not data:
        raise ValueError("hashed_key needs a non-empty str or bytes")
    return "h:" + hashlib.blake2b(data, digest_size=16, person=b"grpc-throttle").hexdigest()


def redact_url(url: object) -> str:
    """``url`` with any password replaced by ``***``, safe for messages."""
    return re.sub(r"//[^@/]*@", "//***@", str(url))


def pool_kwargs(pool: Any, timeout: float, retry: Any) -> dict[str, Any]:
    """Connection settings of ``pool`` with the bucket's timeout budget and no retries.

    The bucket talks through its own connection pool so that its short timeout
    (and no retry, as redis-py >= 6 retries 10 times by default) applies to it
    alone; the client the caller passed is left as it was. The pool has no
    size limit (see ``POOL_SIZE``).
    """
    kwargs = {
        k: v
        for k, v in pool.connection_kwargs.items()
        if not k.startswith(("orig_", "maint_")) and k != "himport_registry"
    }
    kwargs.update(socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry, max_connections=POOL_SIZE)
    return kwargs


#: The settings of a cluster client's connections a bucket's own cluster client keeps
#: (credentials, TLS, encoding); addresses, timeouts, retries and pools are its own.
_CLUSTER_SETTINGS = frozenset(
    {
        "username",
        "password",
        "credential_provider",
        "client_name",
        "encoding",
        "encoding_errors",
        "decode_responses",
        "health_check_interval",
        "socket_keepalive",
        "socket_keepalive_options",
        "socket_read_size",
        "protocol",
        "ssl",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    }
)


def cluster_kwargs(client: Any, stored: dict[str, Any], timeout: float, retry: Any) -> dict[str, Any]:
    """Arguments of a bucket's own Redis Cluster client, like ``pool_kwargs`` for one node.

    Args:
        client: The caller's ``RedisCluster`` (sync or asyncio): its known nodes seed the new one.
        stored: Its connection settings (``nodes_manager.connection_kwargs`` in sync
            redis-py, ``connection_kwargs`` in asyncio).
        timeout: The bucket's timeout; ``retry``: none (see pool_kwargs).
    """
    kwargs = {k: v for k, v in stored.items() if k in _CLUSTER_SETTINGS}
    if getattr(stored.get("connection_class"), "__name__", "") == "SSLConnection":
        kwargs["ssl"] = True  # asyncio keeps TLS as the connection class
    seeds = getattr(client, "startup_nodes", None) or getattr(client.nodes_manager, "startup_nodes", None)
    known = [*client.get_nodes(), *(seeds.values() if isinstance(seeds, dict) else seeds or ())]
    addresses = list(dict.fromkeys((node.host, int(node.port)) for node in known))
    kwargs.update(
        addresses=addresses,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=retry,
        max_connections=POOL_SIZE,
    )
    return kwargs


@dataclass(frozen=True, kw_only=True)
class Settings:
    """A Redis bucket's fixed configuration, validated; see RedisTokenBucket."""

    key: str
    capacity: float
    on_failure: FailurePolicy
    local_share: float
    timeout: float
    cooldown: float
    lease: int
    #: The quota windows beyond the rate (see _redis_windows), checked into a tuple.
    limits: tuple[Limit, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "limits", check_limits(self.limits))
        for limit in self.limits:
            if limit.seconds < MIN_SECONDS:
                raise ValueError(
                    f"limits: seconds must be at least {MIN_SECONDS:g} on a Redis bucket "
                    f"(sub-windows of a microsecond), got {limit!r}"
                )
        if not isinstance(self.key, str) or not self.key.strip():
            raise ValueError(f"key must be a non-empty str, got {self.key!r}")
        _checks.at_least("capacity", self.capacity, 1)
        if self.on_failure not in _POLICIES:
            raise ValueError(f"on_failure must be one of {_POLICIES}, got {self.on_failure!r}")
        if _checks.positive("local_share", self.local_share) > 1:
            raise ValueError(f"local_share must be in (0, 1], got {self.local_share!r}")
        _checks.bounded("timeout", self.timeout, 0, MAX_TIMEOUT)
        _checks.non_negative("cooldown", self.cooldown)
        if _checks.whole("lease", self.lease, 1) > MAX_LEASE:
            raise ValueError(f"lease must be a whole number in [1, {MAX_LEASE}], got {self.lease!r}")
        if not _has_hash_tag(self.redis_key) and "}" in self.redis_key:
            raise ValueError(
                f"key {self.key!r} has a '}}' but no hash tag, so its keys cannot share one Redis Cluster "
                "slot: drop the braces, or use a whole tag such as 'team-{a}'"
            )

    @property
    def min_rate(self) -> float:
        """The slowest rate a bucket can run at: its fallback's share of it must be a valid rate too."""
        return _checks.SMALLEST / self.local_share

    def check_rate(self, name: str, value: object) -> float:
        """``value`` as a rate (the configured or an effective one), or ValueError naming ``name`` and the range."""
        number = _checks._number(name, value)
        if not (number * self.local_share >= _checks.SMALLEST and number <= _checks.LARGEST):  # NaN fails too
            raise ValueError(
                f"{name} must be a number in [{self.min_rate:g}, {_checks.LARGEST:g}] "
                f"(local_share={self.local_share:g} of it goes to the fallback), got {value!r}"
            )
        return number

    @property
    def redis_key(self) -> str:
        """The Redis key of the bucket's hash (unchanged since v0.1, so upgrades keep the schedule)."""
        return KEY_PREFIX + self.key

    @property
    def holes_key(self) -> str:
        """The key of the cancelled reservations (see lua/cancel.lua), in the hash's cluster slot.

        Every script's keys must share a slot on Redis Cluster. The hash's own
        name stays as it was; a name without a hash tag is hashed whole, so
        putting that whole name in braces gives the holes the same slot:
        ``grpc-throttle:k`` and ``{grpc-throttle:k}:holes``. A key with a tag
        of its own (``team-{a}``) keeps it: ``grpc-throttle:team-{a}:holes``.
        """
        key = self.redis_key
        return key + ":holes" if _has_hash_tag(key) else "{" + key + "}:holes"

    @property
    def windows_key(self) -> str:
        """The key of the ``limits`` windows' counts (see _redis_windows), beside the holes."""
        key = self.redis_key
        return key + ":windows" if _has_hash_tag(key) else "{" + key + "}:windows"

    @property
    def limits_arg(self) -> str:
        """The ``limits`` as the scripts take them, or ``""`` without limits."""
        return encode(self.limits)


def _has_hash_tag(key: str) -> bool:
    """True when Redis Cluster hashes only part of ``key``: a non-empty ``{...}``, the first ``{`` deciding."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return end > start + 1
