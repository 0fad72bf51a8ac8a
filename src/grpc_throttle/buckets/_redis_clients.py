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
  pool asks for the master on each new connection.

This module decides which recipe a client needs and builds it; the sync
bucket builds once, the asyncio bucket once per event loop (``_redis_loops``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff

from ._redis_config import cluster_kwargs, pool_kwargs, redact_url
from ._redis_wire import AsyncClusterWire, AsyncWire, ClusterWire, Wire

__all__ = [
    "AsyncMade",
    "SyncMade",
    "aclose_made",
    "async_recipe",
    "client_from_url",
    "close_made",
    "parse_sentinel_url",
    "sync_client",
]

#: URL schemes of a Sentinel deployment (as the ``limits`` library spells them).
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


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


def _sentinel_parts(
    sentinel: Any, timeout: float, retry: Any
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
    if issubclass(first.connection_class, (redis.SSLConnection, redis.asyncio.SSLConnection)):
        sentinel_kwargs["ssl"] = True
    master_kwargs = {k: v for k, v in sentinel.connection_kwargs.items() if k not in ("retry", "connection_pool")}
    master_kwargs.update(socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry)
    return addresses, sentinel_kwargs, master_kwargs


#: The clients each bucket takes, by the names its error message gives.
_SYNC_TYPES = {
    "redis.Redis": redis.Redis,
    "redis.cluster.RedisCluster": redis.cluster.RedisCluster,
    "redis.sentinel.Sentinel": redis.sentinel.Sentinel,
}
_ASYNC_TYPES = {
    "redis.asyncio.Redis": redis.asyncio.Redis,
    "redis.asyncio.cluster.RedisCluster": redis.asyncio.cluster.RedisCluster,
    "redis.asyncio.sentinel.Sentinel": redis.asyncio.sentinel.Sentinel,
}


def _check_type(client: Any, accepted: dict[str, type], other: dict[str, type], hint: str) -> None:
    """ValueError unless ``client`` is one of ``accepted``; names the other bucket for ``other``'s."""
    if isinstance(client, tuple(accepted.values())):
        return
    names = list(accepted)
    use = f"; use {hint}" if isinstance(client, tuple(other.values())) else ""
    raise ValueError(f"client must be a {', '.join(names[:-1])} or {names[-1]}, got {type(client).__name__}{use}")


def _check_service(client: Any, service_name: str | None, sentinel_types: tuple[type, ...]) -> None:
    if isinstance(client, sentinel_types):
        if not isinstance(service_name, str) or not service_name:
            raise ValueError(f"service_name must name the Sentinel service (the master's name), got {service_name!r}")
    elif service_name is not None:
        raise ValueError(f"service_name is for a Sentinel client only, got it with a {type(client).__name__}")


def sync_client(client: Any, service_name: str | None, key: str, timeout: float) -> tuple[SyncMade, bool]:
    """The bucket's own sync client and wire for ``client``; the bool: a cluster.

    Raises:
        ValueError: ``client`` is no sync Redis client this bucket takes, or
            ``service_name`` does not fit it.
    """
    _check_type(client, _SYNC_TYPES, _ASYNC_TYPES, "grpc_throttle.buckets.redis_aio.RedisTokenBucket for redis.asyncio")
    _check_service(client, service_name, (redis.sentinel.Sentinel,))
    retry = redis.retry.Retry(NoBackoff(), 0)
    if isinstance(client, redis.cluster.RedisCluster):
        kwargs = cluster_kwargs(client, client.nodes_manager.connection_kwargs, timeout, retry)
        nodes = [redis.cluster.ClusterNode(host, port) for host, port in kwargs.pop("addresses")]
        own = redis.cluster.RedisCluster(startup_nodes=nodes, **kwargs)
        return SyncMade(own, ClusterWire(own, key)), True
    if isinstance(client, redis.sentinel.Sentinel):
        addresses, sentinel_kwargs, master_kwargs = _sentinel_parts(client, timeout, retry)
        sentinel = redis.sentinel.Sentinel(
            addresses, min_other_sentinels=client.min_other_sentinels, sentinel_kwargs=sentinel_kwargs
        )
        own = sentinel.master_for(service_name, **master_kwargs)
        return SyncMade(own, Wire(own.connection_pool, key), sentinel), False
    if isinstance(client, redis.Redis):
        pool = client.connection_pool
        if isinstance(pool, redis.sentinel.SentinelConnectionPool):
            raise ValueError(
                "a client from Sentinel.master_for() would look the master up with the Sentinel's own "
                "timeouts and retries: pass the Sentinel itself and service_name="
            )
        kwargs = pool_kwargs(pool, timeout, retry)
        own = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
        return SyncMade(own, Wire(own.connection_pool, key)), False
    raise AssertionError("unreachable: _check_type accepted the client")


def async_recipe(
    client: Any, service_name: str | None, key: str, timeout: float
) -> tuple[Callable[[], AsyncMade], bool]:
    """How to make the bucket's own asyncio client and wire for ``client`` (once per loop); the bool: a cluster.

    Raises:
        ValueError: as :func:`sync_client`.
    """
    _check_type(client, _ASYNC_TYPES, _SYNC_TYPES, "grpc_throttle.buckets.redis.RedisTokenBucket for a sync client")
    _check_service(client, service_name, (redis.asyncio.sentinel.Sentinel,))
    retry = redis.asyncio.retry.Retry(NoBackoff(), 0)
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        kwargs = cluster_kwargs(client, client.connection_kwargs, timeout, retry)
        addresses = kwargs.pop("addresses")

        def make_cluster() -> AsyncMade:
            nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in addresses]
            own = redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **kwargs)
            return AsyncMade(own, AsyncClusterWire(own, key))

        return make_cluster, True
    if isinstance(client, redis.asyncio.sentinel.Sentinel):
        addresses, sentinel_kwargs, master_kwargs = _sentinel_parts(client, timeout, retry)
        min_other = client.min_other_sentinels

        def make_sentinel() -> AsyncMade:
            sentinel = redis.asyncio.sentinel.Sentinel(
                addresses, min_other_sentinels=min_other, sentinel_kwargs=sentinel_kwargs
            )
            own = sentinel.master_for(service_name, **master_kwargs)
            return AsyncMade(own, AsyncWire(own.connection_pool, key), sentinel)

        return make_sentinel, False
    if isinstance(client, redis.asyncio.Redis):
        pool = client.connection_pool
        if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
            raise ValueError(
                "a client from Sentinel.master_for() would look the master up with the Sentinel's own "
                "timeouts and retries: pass the Sentinel itself and service_name="
            )
        kwargs = pool_kwargs(pool, timeout, retry)
        connection_class = pool.connection_class

        def make_plain() -> AsyncMade:
            own = redis.asyncio.Redis(
                connection_pool=redis.asyncio.ConnectionPool(connection_class=connection_class, **kwargs)
            )
            return AsyncMade(own, AsyncWire(own.connection_pool, key))

        return make_plain, False
    raise AssertionError("unreachable: _check_type accepted the client")


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


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]``, as ``limits`` reads it.

    The credentials go to the sentinels and to the master alike;
    ``rediss+sentinel://`` connects to both over TLS.

    Returns:
        The sentinels' addresses, the service name, and the connection settings.

    Raises:
        ValueError: the URL is malformed (the message hides any password).
    """
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://, got {shown!r}")
    hosts = parts.netloc.rpartition("@")[2]
    addresses = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"invalid Sentinel URL {shown!r}: each sentinel must be host:port, got {item!r}")
        addresses.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"invalid Sentinel URL {shown!r}: the path must be /service_name or /service_name/db")
    kwargs: dict[str, Any] = {}
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    if parts.scheme == "rediss+sentinel":
        kwargs["ssl"] = True
    if len(path) == 2:
        kwargs["db"] = int(path[1])
    return addresses, unquote(path[0]), kwargs


def client_from_url(url: object, *, asyncio: bool) -> tuple[Any, str | None]:
    """The client a URL names, and the Sentinel service name when it names one.

    ``redis://``, ``rediss://`` and ``unix://`` as redis-py reads them, and the
    Sentinel URLs of :func:`parse_sentinel_url`.

    Raises:
        ValueError: the URL is not a str or is malformed (the message hides any password).
    """
    if not isinstance(url, str):
        raise ValueError(f"url must be a str, got {type(url).__name__}")
    if url.split("://", 1)[0].lower() in SENTINEL_SCHEMES:
        addresses, service, kwargs = parse_sentinel_url(url)
        shared = {k: v for k, v in kwargs.items() if k in ("username", "password", "ssl")}
        sentinel_class = redis.asyncio.sentinel.Sentinel if asyncio else redis.sentinel.Sentinel
        return sentinel_class(addresses, sentinel_kwargs=shared, **kwargs), service
    try:
        client = (redis.asyncio.Redis if asyncio else redis.Redis).from_url(url)
    except (ValueError, TypeError) as error:
        raise ValueError(f"invalid Redis URL {redact_url(url)!r}: {error}") from None
    return client, None
