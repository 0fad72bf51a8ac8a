"""The bucket's own Redis client, made from the one the caller passed (sync and asyncio).

A bucket never sends through the caller's client: it copies its connection
settings (address, credentials, TLS) into a client of its own whose sockets
time out after the bucket's ``timeout`` and which never retries (redis-py >= 6
retries 10 times by default, which would turn a 50 ms budget into seconds).
The caller's client is left as it was.

Three deployments, each as one recipe used by both flavours:

* a plain ``Redis``: a pool of the bucket's own (``pool_kwargs``);
* ``RedisCluster``: a cluster client of its own, seeded with the known nodes
  (``cluster_kwargs``);
* ``Sentinel`` and a service name: a ``Sentinel`` of its own whose clients of
  the sentinels time out after ``timeout`` and do not retry, so that one hung
  sentinel costs one ``timeout`` before the next is asked; its ``master_for``
  pool asks for the master on each new connection, and the wire asks again
  every second (``_redis_wire.SentinelWire``) so that a failover re-points
  open connections too.

This module decides which recipe a client needs and builds it; the sync
bucket builds once, the asyncio bucket once per event loop (``_redis_loops``).
valkey-py (a fork of redis-py with the same API under other class names) is
taken alike: the bucket's own client then comes from valkey-py too.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._redis_config import cluster_kwargs, pool_kwargs
from ._redis_wire import AsyncClusterWire, AsyncSentinelWire, AsyncWire, ClusterWire, SentinelWire, Wire

__all__ = [
    "AsyncMade",
    "SyncMade",
    "aclose_made",
    "async_recipe",
    "close_made",
    "library_kit",
    "redis_kit",
    "sync_client",
]


class SyncMade(NamedTuple):
    """A sync bucket's own client, the wire that runs its scripts, and its Sentinel if any."""

    client: Any
    wire: Wire | ClusterWire
    #: The bucket's own Sentinel (its clients of the sentinels), closed with the client.
    sentinel: Any = None


class AsyncMade(NamedTuple):
    """The same for asyncio, made once per event loop."""

    client: Any
    wire: AsyncWire | AsyncClusterWire
    sentinel: Any = None


@dataclass(frozen=True)
class _Kit:
    """One client library's classes, sync or asyncio: redis-py's, or valkey-py's (a fork, same API)."""

    plain: Any
    cluster: Any
    sentinel: Any
    pool: Any
    sentinel_pool: Any
    node: Any
    retry: Any
    no_backoff: Any
    ssl_connection: Any


#: Each kit's classes by dotted name (module:attribute), relative to the library.
_KIT_CLASSES = {
    False: (
        "Redis",
        "cluster:RedisCluster",
        "sentinel:Sentinel",
        "ConnectionPool",
        "sentinel:SentinelConnectionPool",
        "cluster:ClusterNode",
        "retry:Retry",
        "backoff:NoBackoff",
        "SSLConnection",
    ),
    True: (
        "asyncio:Redis",
        "asyncio.cluster:RedisCluster",
        "asyncio.sentinel:Sentinel",
        "asyncio:ConnectionPool",
        "asyncio.sentinel:SentinelConnectionPool",
        "asyncio.cluster:ClusterNode",
        "asyncio.retry:Retry",
        "backoff:NoBackoff",
        "asyncio:SSLConnection",
    ),
}


@functools.cache
def library_kit(library: str, asyncio: bool) -> _Kit | None:
    """The classes of ``library`` ("redis" or "valkey"), or None when it is not installed."""
    classes = []
    for dotted in _KIT_CLASSES[asyncio]:
        module, _, attribute = dotted.rpartition(":") if ":" in dotted else ("", "", dotted)
        if library == "valkey":
            attribute = attribute.replace("Redis", "Valkey")
        try:
            imported = importlib.import_module(f"{library}.{module}" if module else library)
        except ImportError:
            return None
        classes.append(getattr(imported, attribute))
    return _Kit(*classes)


def redis_kit(asyncio: bool) -> _Kit:
    """redis-py's kit (always installed: the bucket needs it)."""
    found = library_kit("redis", asyncio)
    assert found is not None
    return found


def _kits(asyncio: bool) -> list[_Kit]:
    """redis-py's kit, then valkey-py's when it is installed."""
    return [kit for kit in (library_kit("redis", asyncio), library_kit("valkey", asyncio)) if kit is not None]


#: What each bucket takes, for messages.
_ACCEPTED = {
    False: "a redis.Redis, redis.cluster.RedisCluster or redis.sentinel.Sentinel (or valkey-py's twin)",
    True: "a redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster or redis.asyncio.sentinel.Sentinel "
    "(or valkey.asyncio's twin)",
}
#: Where to go with the other flavour's client.
_OTHER_BUCKET = {
    False: "grpc_throttle.buckets.redis_aio.RedisTokenBucket for an asyncio client",
    True: "grpc_throttle.buckets.redis.RedisTokenBucket for a sync client",
}


def _kit_of(client: Any, asyncio: bool) -> _Kit:
    """The kit ``client`` belongs to; ValueError naming what is accepted (and the other bucket)."""
    for kit in _kits(asyncio):
        if isinstance(client, (kit.plain, kit.cluster, kit.sentinel)):
            return kit
    other = any(isinstance(client, (k.plain, k.cluster, k.sentinel)) for k in _kits(not asyncio))
    hint = f"; use {_OTHER_BUCKET[asyncio]}" if other else ""
    raise ValueError(f"client must be {_ACCEPTED[asyncio]}, got {type(client).__name__}{hint}")


def _sentinel_parts(
    kit: _Kit, sentinel: Any, timeout: float, retry: Any
) -> tuple[list[tuple[str, int]], dict[str, Any], dict[str, Any]]:
    """The sentinels' addresses, their client settings and the master's, with the bucket's budget."""
    if not sentinel.sentinels:
        raise ValueError("the Sentinel client names no sentinels")
    addresses = []
    for client in sentinel.sentinels:
        stored = client.connection_pool.connection_kwargs
        addresses.append((str(stored["host"]), int(stored["port"])))
    first = sentinel.sentinels[0].connection_pool
    sentinel_kwargs = pool_kwargs(first, timeout, retry)
    for name in ("host", "port", "db", "max_connections"):
        sentinel_kwargs.pop(name, None)
    if issubclass(first.connection_class, kit.ssl_connection):
        sentinel_kwargs["ssl"] = True
    master_kwargs = {k: v for k, v in sentinel.connection_kwargs.items() if k not in ("retry", "connection_pool")}
    master_kwargs.update(socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry)
    return addresses, sentinel_kwargs, master_kwargs


def _check_service(kit: _Kit, client: Any, service_name: str | None) -> None:
    if isinstance(client, kit.sentinel):
        if not isinstance(service_name, str) or not service_name:
            raise ValueError(f"service_name must name the Sentinel service (the master's name), got {service_name!r}")
    elif service_name is not None:
        raise ValueError(f"service_name is for a Sentinel client only, got it with a {type(client).__name__}")
    if isinstance(client, kit.plain) and isinstance(client.connection_pool, kit.sentinel_pool):
        raise ValueError(
            "a client from Sentinel.master_for() would look the master up with the Sentinel's own "
            "timeouts and retries: pass the Sentinel itself and service_name="
        )


def _recipe(
    client: Any, service_name: str | None, timeout: float, asyncio: bool
) -> tuple[Callable[[], tuple[Any, Any]], bool]:
    """How to make the bucket's own client and its Sentinel if any (once, or once per loop); the bool: a cluster."""
    kit = _kit_of(client, asyncio)
    _check_service(kit, client, service_name)
    retry = kit.retry(kit.no_backoff(), 0)
    if isinstance(client, kit.cluster):
        stored = client.connection_kwargs if asyncio else client.nodes_manager.connection_kwargs
        kwargs = cluster_kwargs(client, stored, timeout, retry)
        addresses = kwargs.pop("addresses")
        return lambda: (kit.cluster(startup_nodes=[kit.node(h, p) for h, p in addresses], **kwargs), None), True
    if isinstance(client, kit.sentinel):
        addresses, sentinel_kwargs, master_kwargs = _sentinel_parts(kit, client, timeout, retry)
        min_other = client.min_other_sentinels

        def make_sentinel() -> tuple[Any, Any]:
            sentinel = kit.sentinel(addresses, min_other_sentinels=min_other, sentinel_kwargs=sentinel_kwargs)
            return sentinel.master_for(service_name, **master_kwargs), sentinel

        return make_sentinel, False
    pool = client.connection_pool
    kwargs = pool_kwargs(pool, timeout, retry)
    connection_class = pool.connection_class
    return lambda: (kit.plain(connection_pool=kit.pool(connection_class=connection_class, **kwargs)), None), False


def sync_client(client: Any, service_name: str | None, key: str, timeout: float) -> tuple[SyncMade, bool]:
    """The bucket's own sync client and wire for ``client``; the bool: a cluster.

    Raises:
        ValueError: ``client`` is no sync client this bucket takes (redis-py's
            or valkey-py's), or ``service_name`` does not fit it.
    """
    make, cluster = _recipe(client, service_name, timeout, asyncio=False)
    own, sentinel = make()
    if cluster:
        return SyncMade(own, ClusterWire(own, key), sentinel), True
    wire_class = Wire if sentinel is None else SentinelWire
    return SyncMade(own, wire_class(own, key), sentinel), False


def async_recipe(
    client: Any, service_name: str | None, key: str, timeout: float
) -> tuple[Callable[[], AsyncMade], bool]:
    """How to make the bucket's own asyncio client and wire for ``client`` (once per loop); the bool: a cluster.

    Raises:
        ValueError: as :func:`sync_client`.
    """
    make, cluster = _recipe(client, service_name, timeout, asyncio=True)

    def make_async() -> AsyncMade:
        own, sentinel = make()
        if cluster:
            return AsyncMade(own, AsyncClusterWire(own, key), sentinel)
        wire_class = AsyncWire if sentinel is None else AsyncSentinelWire
        return AsyncMade(own, wire_class(own, key), sentinel)

    return make_async, cluster


async def aclose_made(made: AsyncMade) -> None:
    """Close one loop's client and its connections (and those to the sentinels)."""
    await made.client.aclose()
    if isinstance(made.wire, AsyncWire):
        await made.client.connection_pool.disconnect()
    if made.sentinel is not None:
        for client in made.sentinel.sentinels:
            await client.aclose()


def close_made(made: SyncMade) -> None:
    """Close the sync client's connections (and those to the sentinels)."""
    if isinstance(made.wire, ClusterWire):
        made.client.close()
    else:
        made.client.connection_pool.disconnect()
    if made.sentinel is not None:
        for client in made.sentinel.sentinels:
            client.close()
