"""The bucket's scripts over a pooled connection, without redis-py's per-command layer.

``redis.Redis.evalsha`` runs each command through retries, event dispatch and
observability hooks, and packs its arguments anew. On a loopback Redis that
layer costs about half of a bare ``EVALSHA`` round trip (redis-py 8: ~80 of
~145 µs), which is more than the bucket's script itself. A bucket sends one
command per call on a pool of its own, with no retries, so it does just that:
takes a connection from the pool, sends the command (packed once for the
common arguments), reads the reply and gives the connection back
(``benchmarks/bench_redis.py`` measures the result).

Errors mean what they mean in redis-py: an error reply (``NOSCRIPT``, a key
of the wrong type) is raised as redis-py raises it and the connection stays
usable; anything else (timeout, reset, cancellation) drops the connection
before it is raised, as redis-py does.

On Redis Cluster (:class:`ClusterWire`, :class:`AsyncClusterWire`) the command
goes through the cluster client instead, which finds the node holding the
key's slot and follows ``MOVED`` and ``ASK`` when slots move; that layer is
the price of a cluster (one loopback run, interleaved rounds, medians: 94 vs
86 µs per reserve sync, 114 vs 88 µs asyncio, on a busy 2-core machine). A
script is loaded on every primary, since ``ASK`` may lead to any (see _others).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Sequence
from typing import Any

from ._redis_errors import is_client_error, is_error_reply

_logger = logging.getLogger(__name__)

__all__ = ["AsyncClusterWire", "AsyncSentinelWire", "AsyncWire", "ClusterWire", "SentinelWire", "Wire"]

#: Packed commands kept per wire (the common arguments change only with the rate).
_CACHE_SIZE = 16
#: Seconds between two asks of the sentinels for the master (see SentinelWire).
SENTINEL_RECHECK = 1.0
#: The same after no sentinel answered.
SENTINEL_RECHECK_AFTER_FAILURE = 30.0


def _connection_args(pool: Any) -> tuple[str, ...]:
    """``get_connection``'s arguments: redis-py < 5.3 needs a command name, later ones warn about it."""
    try:
        param = inspect.signature(pool.get_connection).parameters.get("command_name")
    except (TypeError, ValueError):
        return ()
    return ("EVALSHA",) if param is not None and param.default is inspect.Parameter.empty else ()


class _Packer:
    """Packs ``EVALSHA sha 1 key *args``; commands whose arguments are a tuple are cached."""

    def __init__(self, pool: Any, key: str) -> None:
        #: The bucket's own connection pool.
        self.pool = pool
        #: The bucket's Redis key.
        self.key = key
        #: What get_connection needs (see _connection_args).
        self.connection_args = _connection_args(pool)
        #: Packed commands by (sha, args) for tuple args.
        self._cache: dict[tuple[str, tuple[str | bytes, ...]], list[bytes]] = {}

    def pack(self, conn: Any, sha: str, args: Sequence[str | bytes], more_keys: Sequence[str] = ()) -> list[bytes]:
        if more_keys:  # the cancel script's holes beside the bucket (never cached)
            return list(conn.pack_command("EVALSHA", sha, 1 + len(more_keys), self.key, *more_keys, *args))
        if not isinstance(args, tuple):
            return list(conn.pack_command("EVALSHA", sha, 1, self.key, *args))
        packed = self._cache.get((sha, args))
        if packed is None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            packed = self._cache[(sha, args)] = list(conn.pack_command("EVALSHA", sha, 1, self.key, *args))
        return packed


class Wire(_Packer):
    """Runs ``EVALSHA`` on a connection of a sync ``redis.ConnectionPool``.

    Example:
        >>> wire = Wire(redis.ConnectionPool(), "grpc-throttle:k")  # doctest: +SKIP
        >>> wire.evalsha(sha, ("10.0", "1.0"))  # doctest: +SKIP
    """

    def evalsha(self, sha: str, args: Sequence[str | bytes], more_keys: Sequence[str] = ()) -> Any:
        """The script's reply (keys: the bucket's, then ``more_keys``); raises what redis-py would."""
        conn = self.pool.get_connection(*self.connection_args)
        try:
            conn.send_packed_command(self.pack(conn, sha, args, more_keys))
            return conn.read_response()
        except BaseException as error:
            if not is_error_reply(error):
                conn.disconnect()
            raise
        finally:
            self.pool.release(conn)

    def load(self, source: str) -> None:
        """``SCRIPT LOAD`` the script ``source``."""
        conn = self.pool.get_connection(*self.connection_args)
        try:
            conn.send_command("SCRIPT", "LOAD", source)
            conn.read_response()
        except BaseException as error:
            if not is_error_reply(error):
                conn.disconnect()
            raise
        finally:
            self.pool.release(conn)


class AsyncWire(_Packer):
    """Runs ``EVALSHA`` on a connection of a ``redis.asyncio.ConnectionPool``.

    Example:
        >>> wire = AsyncWire(redis.asyncio.ConnectionPool(), "grpc-throttle:k")  # doctest: +SKIP
        >>> await wire.evalsha(sha, ("10.0", "1.0"))  # doctest: +SKIP
    """

    async def evalsha(self, sha: str, args: Sequence[str | bytes], more_keys: Sequence[str] = ()) -> Any:
        """The script's reply (keys: the bucket's, then ``more_keys``); raises what redis-py would."""
        conn = await self.pool.get_connection(*self.connection_args)
        try:
            await conn.send_packed_command(self.pack(conn, sha, args, more_keys))
            return await conn.read_response()
        except BaseException as error:
            if not is_error_reply(error):
                await conn.disconnect(nowait=True)
            raise
        finally:
            await self.pool.release(conn)

    async def load(self, source: str) -> None:
        """``SCRIPT LOAD`` the script ``source``."""
        conn = await self.pool.get_connection(*self.connection_args)
        try:
            await conn.send_command("SCRIPT", "LOAD", source)
            await conn.read_response()
        except BaseException as error:
            if not is_error_reply(error):
                await conn.disconnect(nowait=True)
            raise
        finally:
            await self.pool.release(conn)


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

    def __init__(self, pool: Any, key: str) -> None:
        super().__init__(pool, key)
        #: When to ask the sentinels again.
        self.recheck = _Recheck()

    def evalsha(self, sha: str, args: Sequence[str | bytes], more_keys: Sequence[str] = ()) -> Any:
        if self.recheck.now():
            try:
                self.pool.get_master_address()
            except Exception as error:
                self.recheck.failed(error)
        return super().evalsha(sha, args, more_keys)


class AsyncSentinelWire(AsyncWire):
    """:class:`AsyncWire` on a Sentinel-managed pool, which asks for the master every second."""

    def __init__(self, pool: Any, key: str) -> None:
        super().__init__(pool, key)
        #: When to ask the sentinels again.
        self.recheck = _Recheck()

    async def evalsha(self, sha: str, args: Sequence[str | bytes], more_keys: Sequence[str] = ()) -> Any:
        if self.recheck.now():
            try:
                await self.pool.get_master_address()
            except Exception as error:
                self.recheck.failed(error)
        return await super().evalsha(sha, args, more_keys)


class ClusterWire:
    """Runs ``EVALSHA`` through a sync ``redis.cluster.RedisCluster``, on the node of the key's slot.

    Example:
        >>> wire = ClusterWire(redis.cluster.RedisCluster(), "grpc-throttle:k")  # doctest: +SKIP
        >>> wire.evalsha(sha, ("10.0", "1.0"))  # doctest: +SKIP
    """

    def __init__(self, client: Any, key: str) -> None:
        #: The bucket's own cluster client.
        self.client = client
        #: The bucket's Redis key; every key sent lies in its slot.
        self.key = key

    def evalsha(self, sha: str, args: Sequence[str | bytes], more_keys: Sequence[str] = ()) -> Any:
        """The script's reply (keys: the bucket's, then ``more_keys``); raises what redis-py would."""
        return self.client.execute_command("EVALSHA", sha, 1 + len(more_keys), self.key, *more_keys, *args)

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
