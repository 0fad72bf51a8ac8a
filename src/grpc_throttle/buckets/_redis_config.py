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

#: Prefix of every Redis key grpc-throttle writes.
KEY_PREFIX = "grpc-throttle:"
#: What a bucket does while Redis is unreachable (see RedisTokenBucket).
FailurePolicy = Literal["local", "allow", "fail"]
_POLICIES = ("local", "allow", "fail")
#: The operations, one Lua script each, in ``lua/``; ``_common.lua`` is prepended.
_LUA = resources.files(__package__) / "lua"
SCRIPTS = {
    name: (_LUA / "_common.lua").read_text("utf-8") + (_LUA / f"{name}.lua").read_text("utf-8")
    for name in ("reserve", "cancel", "set_rate", "state", "due")
}
#: Their SHA1 digests, as EVALSHA names them.
SHAS = {name: hashlib.sha1(src.encode("utf-8")).hexdigest() for name, src in SCRIPTS.items()}
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

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key.strip():
            raise ValueError(f"key must be a non-empty str, got {self.key!r}")
        _checks.at_least("capacity", self.capacity, 1)
        if self.on_failure not in _POLICIES:
            raise ValueError(f"on_failure must be one of {_POLICIES}, got {self.on_failure!r}")
        if _checks.positive("local_share", self.local_share) > 1:
            raise ValueError(f"local_share must be in (0, 1], got {self.local_share!r}")
        _checks.positive("timeout", self.timeout)
        _checks.non_negative("cooldown", self.cooldown)
        _checks.whole("lease", self.lease, 1)

    @property
    def redis_key(self) -> str:
        """The Redis key of the bucket's hash."""
        return KEY_PREFIX + self.key
