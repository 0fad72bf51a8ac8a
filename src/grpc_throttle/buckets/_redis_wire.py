"""The bucket's scripts on its own client: ``EVALSHA``, ``SCRIPT LOAD``, and where to send them.

Each wire runs the commands of a bucket's steps (``_redis_steps``) through
redis-py's (or valkey-py's) public API on the bucket's own client, which has
the bucket's ``timeout`` and no retries. What differs between deployments is
where a command goes:

* a plain client: its pool's server (:class:`Wire`, :class:`AsyncWire`);
* Sentinel: the master, asked of the sentinels again every second so that a
  failover re-points open connections too (:class:`SentinelWire`);
* Redis Cluster: the node holding the key's slot, found by the cluster client,
  which follows ``MOVED`` and ``ASK`` when slots move (:class:`ClusterWire`).

Errors are redis-py's own: an error reply (``NOSCRIPT``, a key of the wrong
type) is raised as its class, and anything else (timeout, reset,
cancellation) has closed the connection before it is raised. On a cluster a
script is loaded on every primary, since ``ASK`` may lead to any (see
``ClusterWire._others``).

An earlier version wrote ``EVALSHA`` on a pooled connection itself, skipping
redis-py's per-command layer (about 25 µs of a 150 µs loopback round trip,
``benchmarks/bench_redis.py``); it depended on redis-py's internals
(``pack_command``, ``get_connection``'s signature), which change between
versions and differ in valkey-py, for a saving no stated target needed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from ._redis_errors import is_client_error

_logger = logging.getLogger(__name__)

__all__ = ["AsyncClusterWire", "AsyncSentinelWire", "AsyncWire", "ClusterWire", "SentinelWire", "Wire"]

#: Seconds between two asks of the sentinels for the master (see SentinelWire).
SENTINEL_RECHECK = 1.0
#: The same after no sentinel answered.
SENTINEL_RECHECK_AFTER_FAILURE = 30.0


class Wire:
    """Runs the bucket's scripts through a sync ``redis.Redis`` (or ``valkey.Valkey``).

    Example:
        >>> wire = Wire(redis.Redis(), "grpc-throttle:k")  # doctest: +SKIP
        >>> wire.evalsha(sha, ("10.0", "1.0"))  # doctest: +SKIP
    """

    def __init__(self, client: Any, key: str) -> None:
        #: The bucket's own client.
        self.client = client
        #: The bucket's Redis key; every key sent lies in its slot.
        self.key = key

    def evalsha(self, sha: str, args: Sequence[str | bytes], more_keys: Sequence[str] = ()) -> Any:
        """The script's reply (keys: the bucket's, then ``more_keys``); raises what redis-py raises."""
        return self.client.evalsha(sha, 1 + len(more_keys), self.key, *more_keys, *args)

    def load(self, source: str) -> None:
        """``SCRIPT LOAD`` the script ``source``."""
        self.client.script_load(source)


class AsyncWire(Wire):
    """Runs the bucket's scripts through a ``redis.asyncio.Redis`` (or valkey's).

    Example:
        >>> wire = AsyncWire(redis.asyncio.Redis(), "grpc-throttle:k")  # doctest: +SKIP
        >>> await wire.evalsha(sha, ("10.0", "1.0"))  # doctest: +SKIP
    """

    async def evalsha(self, sha: str, args: Sequence[str | bytes], more_keys: Sequence[str] = ()) -> Any:
        """The script's reply (keys: the bucket's, then ``more_keys``); raises what redis-py raises."""
        return await self.client.evalsha(sha, 1 + len(more_keys), self.key, *more_keys, *args)

    async def load(self, source: str) -> None:  # type: ignore[override]
        """``SCRIPT LOAD`` the script ``source``."""
        await self.client.script_load(source)


class _Recheck:
    """When a Sentinel-managed pool should ask the sentinels for the master again.

    redis-py's Sentinel pool asks only when it opens a connection, so after a
    failover its open connections keep writing to the old master until
    Sentinel demotes it (on its next INFO of it, up to 10 s): two schedules at
    once. Asking every :data:`SENTINEL_RECHECK` seconds (one ``SENTINEL
    MASTERS``, bounded by the bucket's timeout per sentinel) re-points the
    pool within that: redis-py then closes the idle connections to the old
    master and those in use as they come back.
    """

    def __init__(self) -> None:
        #: When to ask next (time.monotonic); racing threads at worst ask twice.
        self.due = time.monotonic() + SENTINEL_RECHECK

    def now(self) -> bool:
        now = time.monotonic()
        if now < self.due:
            return False
        self.due = now + SENTINEL_RECHECK
        return True

    def failed(self, error: BaseException) -> None:
        """No sentinel answered: keep the master in use (a dead one shows on the call itself),
        and ask again only after ``SENTINEL_RECHECK_AFTER_FAILURE``: each ask costs a timeout
        per sentinel, which calls should not pay every second while the sentinels are down."""
        if not is_client_error(error):
            raise error
        self.due = time.monotonic() + SENTINEL_RECHECK_AFTER_FAILURE
        _logger.debug("asking the sentinels for the master failed: %r", error)


class SentinelWire(Wire):
    """:class:`Wire` on a Sentinel-managed pool, which asks for the master every second (see _Recheck)."""

    def __init__(self, client: Any, key: str) -> None:
        super().__init__(client, key)
        #: When to ask the sentinels again.
        self.recheck = _Recheck()

    def evalsha(self, sha: str, args: Sequence[str | bytes], more_keys: Sequence[str] = ()) -> Any:
        if self.recheck.now():
            try:
                self.client.connection_pool.get_master_address()
            except Exception as error:
                self.recheck.failed(error)
        return super().evalsha(sha, args, more_keys)


class AsyncSentinelWire(AsyncWire):
    """:class:`AsyncWire` on a Sentinel-managed pool, which asks for the master every second."""

    def __init__(self, client: Any, key: str) -> None:
        super().__init__(client, key)
        #: When to ask the sentinels again.
        self.recheck = _Recheck()

    async def evalsha(self, sha: str, args: Sequence[str | bytes], more_keys: Sequence[str] = ()) -> Any:
        if self.recheck.now():
            try:
                await self.client.connection_pool.get_master_address()
            except Exception as error:
                self.recheck.failed(error)
        return await super().evalsha(sha, args, more_keys)


class ClusterWire(Wire):
    """Runs the bucket's scripts through a sync ``redis.cluster.RedisCluster``, on the node of the key's slot.

    Example:
        >>> wire = ClusterWire(redis.cluster.RedisCluster(), "grpc-throttle:k")  # doctest: +SKIP
        >>> wire.evalsha(sha, ("10.0", "1.0"))  # doctest: +SKIP
    """

    def load(self, source: str) -> None:
        """``SCRIPT LOAD`` the script on the node holding the key, then on the other primaries (see _others).

        Raises:
            What redis-py raises for the node holding the key; the others' Redis errors are logged and skipped.
        """
        owner = self.client.get_node_from_key(self.key)
        self.client.execute_command("SCRIPT LOAD", source, target_nodes=owner)
        for node in _others(self.client, owner):
            try:
                self.client.execute_command("SCRIPT LOAD", source, target_nodes=node)
            except Exception as error:
                _skipped(node, error)


class AsyncClusterWire(ClusterWire):
    """Runs ``EVALSHA`` through a ``redis.asyncio.cluster.RedisCluster``, on the node of the key's slot.

    The first command runs alone: redis-py's asyncio cluster client (8.1) drops
    connections it opens while concurrent first commands set it up ("Connection
    closed by server"), which its own retries would hide and the bucket's
    no-retry client does not.
    """

    def __init__(self, client: Any, key: str) -> None:
        super().__init__(client, key)
        #: True once one command has run (whatever it answered).
        self._warm = False
        #: Held by the first command; the calls arriving meanwhile wait for it.
        self._first = asyncio.Lock()

    async def evalsha(self, sha: str, args: Sequence[str | bytes], more_keys: Sequence[str] = ()) -> Any:
        """The script's reply (keys: the bucket's, then ``more_keys``); raises what redis-py would."""
        command = ("EVALSHA", sha, 1 + len(more_keys), self.key, *more_keys, *args)
        if not self._warm:
            async with self._first:
                if not self._warm:
                    try:
                        return await self.client.execute_command(*command)
                    finally:
                        self._warm = True
        return await self.client.execute_command(*command)

    async def load(self, source: str) -> None:  # type: ignore[override]
        """``SCRIPT LOAD`` the script on the node holding the key, then on the other primaries (see _others)."""
        if not self.client.get_nodes():  # the slots are learnt on first use
            await self.client.initialize()
        owner = self.client.get_node_from_key(self.key)
        await self.client.execute_command("SCRIPT LOAD", source, target_nodes=owner)
        for node in _others(self.client, owner):
            try:
                await self.client.execute_command("SCRIPT LOAD", source, target_nodes=node)
            except Exception as error:
                _skipped(node, error)


def _others(client: Any, owner: Any) -> list[Any]:
    """The primaries of ``client``'s slot map other than ``owner``, where a script is loaded too.

    ``NOSCRIPT`` can come from a primary other than the slot's owner: while the
    slot migrates, the cluster client follows ``ASK`` to the importing primary,
    which has never run the bucket's scripts. The reply does not say which
    node answered, so the script goes to every primary; a load happens only
    after a ``NOSCRIPT``, and costs one round trip per primary then. A primary
    that is down costs its connect (at most the bucket's timeout) and is
    skipped: the owner is the one that must have the script. A primary that
    holds no slot yet (a new one being filled) is not in the map; redis-py
    8.2 cannot follow ``ASK`` to one either (redis-py issue 4015).
    """
    return [node for node in client.get_primaries() if node.name != owner.name]


def _skipped(node: Any, error: Exception) -> None:
    """A load on a primary other than the owner failed: not the call's concern, unless it is a bug."""
    if not is_client_error(error):
        raise error
    _logger.debug("SCRIPT LOAD on %s failed: %r", node.name, error)
