"""The Redis bucket over TLS as a least-privilege ACL user, on a real TLS-only redis-server.

The behaviour suite runs on this server too (the tls rows of
test_bucket_backends.py), which checks every script, cancel's second key
included, under the ACL user's rules.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
import redis

from grpc_throttle.buckets._redis_config import ACL_COMMANDS, acl_rules
from grpc_throttle.buckets.redis import RedisReservation, RedisTokenBucket
from grpc_throttle.buckets.redis_aio import RedisTokenBucket as AsyncRedisTokenBucket
from grpc_throttle.errors import BucketUnavailableError
from tests.redis_deployments import RedisTLS

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "src" / "grpc_throttle" / "buckets" / "lua"


def test_the_acl_user_runs_every_operation_over_tls(redis_tls: RedisTLS, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for key in ("tls-plain", "team-{tls}"):  # with and without a hash tag of its own: both holes keys
        bucket = RedisTokenBucket.from_url(redis_tls.url(), key=key, rate=2, on_failure="fail", timeout=1)
        first, second = bucket.reserve(), bucket.reserve()
        assert isinstance(second, RedisReservation) and 0.3 < second.delay < 0.51
        second.cancel()  # the holes key and ZADD: failures here are only logged, hence caplog
        assert 0.3 < bucket.reserve().delay < 0.51  # given back
        bucket.record_throttle(first.round)  # type: ignore[union-attr]
        assert bucket.effective_rate < 2
        bucket.set_effective_rate(2)
        assert bucket.available() <= 0
        bucket.close()
    assert not [r for r in caplog.records if "failed" in r.getMessage()], caplog.text


def test_the_acl_user_can_do_nothing_else(redis_tls: RedisTLS) -> None:
    client = redis.Redis.from_url(redis_tls.url())
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.get("grpc-throttle:x")  # a command not on the list
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.type("someone-else")  # a key outside the patterns
    client.close()


def test_a_certificate_that_does_not_verify_names_the_fix_whatever_on_failure(redis_tls: RedisTLS) -> None:
    for policy in ("local", "allow", "fail"):
        bucket = RedisTokenBucket.from_url(redis_tls.url(ca=redis_tls.other_ca), key="k", rate=1, on_failure=policy)
        with pytest.raises(BucketUnavailableError, match=r"TLS certificate did not verify: give the client the CA"):
            bucket.reserve()
        bucket.close()

    async def aio() -> None:
        bucket = AsyncRedisTokenBucket.from_url(redis_tls.url(ca=redis_tls.other_ca), key="k", rate=1, timeout=1)
        try:
            with pytest.raises(BucketUnavailableError, match=r"TLS certificate did not verify"):
                await bucket.reserve()
        finally:
            await bucket.aclose()

    asyncio.run(aio())


def test_a_wrong_password_and_a_missing_permission_name_the_fix(redis_tls: RedisTLS) -> None:
    bucket = RedisTokenBucket.from_url(redis_tls.url(password="wrong"), key="k", rate=1)
    with pytest.raises(BucketUnavailableError, match="refused the credentials"):
        bucket.reserve()
    bucket.close()
    # A user allowed to run scripts but not the commands inside them.
    assert redis_tls.server.command(b"ACL SETUSER limited on >pw ~* -@all +evalsha +script|load") == b"+OK\r\n"
    bucket = RedisTokenBucket.from_url(redis_tls.url(user="limited", password="pw"), key="k", rate=1)
    with pytest.raises(BucketUnavailableError, match=re.escape(acl_rules())):  # the recipe, in full
        bucket.reserve()
    bucket.close()


def test_the_acl_recipe_covers_every_command_the_scripts_run_and_is_in_the_readme() -> None:
    called = set()
    for script in LUA.glob("*.lua"):
        called |= {name.lower() for name in re.findall(r"redis\.p?call\(\s*['\"](\w+)", script.read_text())}
    assert called and called <= set(ACL_COMMANDS), called - set(ACL_COMMANDS)
    assert acl_rules() in (ROOT / "README.md").read_text()
