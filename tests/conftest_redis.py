"""Pytest fixtures for tests against a real ``redis-server`` (a plugin module).

Register it from ``tests/conftest.py`` with ``pytest_plugins = ["conftest_redis"]``.
Without ``redis-server`` on PATH (or without redis-py) the tests using these
fixtures are skipped, except under ``CI=true``, where they fail: the CI script
installs Redis, so a missing one there is a broken setup, not a reason to skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis_server import RedisServer, redis_server_binary

__all__ = ["bucket_key", "own_redis_server", "redis_client", "redis_server", "require_redis"]


def require_redis() -> None:
    """Skip (or, under CI=true, fail) the calling test when Redis is not available."""
    missing = []
    if redis_server_binary() is None:
        missing.append("redis-server is not on PATH")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("redis-py is not installed")
    if not missing:
        return
    reason = "; ".join(missing)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}, and CI=true: the CI setup must install it", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server for the whole session; tests keep apart by using their own keys."""
    require_redis()
    with RedisServer() as server:
        yield server


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
