"""Redis errors by class: the pure classifier, then real servers set up wrong."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator

import pytest
import redis
from redis import exceptions as rx

from grpc_throttle.buckets._redis_errors import classify, is_client_error, is_error_reply, is_noscript
from grpc_throttle.buckets.local import Reservation
from grpc_throttle.buckets.redis import RedisTokenBucket
from grpc_throttle.buckets.redis_aio import RedisTokenBucket as AsyncRedisTokenBucket
from grpc_throttle.errors import BucketUnavailableError
from tests.redis_deployments import require_valkey
from tests.redis_server import RedisServer, require_redis

# -- the classifier (pure) ---------------------------------------------------


def test_a_script_denied_a_command_by_acl_is_a_mistake_naming_the_recipe() -> None:
    # redis-server 7.0's reply (a plain ERR: the text is all there is; test_redis_tls meets it for real).
    error = rx.ResponseError(
        "The user executing the script can't run this command or subcommand script: 226c..., on @user_script:31."
    )
    verdict = classify(error)
    assert verdict.kind == "mistake" and "ACL SETUSER <user> resetkeys ~grpc-throttle:*" in verdict.fix


def test_noscript_and_error_replies_are_known_by_class_for_both_clients() -> None:
    assert is_noscript(rx.NoScriptError("No matching script")) and is_error_reply(rx.NoScriptError("x"))
    assert not is_error_reply(rx.ConnectionError("x")) and not is_noscript(rx.ResponseError("x"))
    assert is_client_error(rx.TimeoutError()) and not is_client_error(ValueError())
    require_valkey()  # the test extra installs it; CI=true fails without it
    import valkey.exceptions as valkey_exceptions

    assert is_noscript(valkey_exceptions.NoScriptError("No matching script"))
    assert is_error_reply(valkey_exceptions.ResponseError("WRONGTYPE"))
    assert classify(valkey_exceptions.AuthenticationError("invalid password")).kind == "mistake"
    assert classify(valkey_exceptions.ConnectionError("refused")).kind == "outage"


@pytest.mark.parametrize(
    "error",
    [
        rx.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
        rx.TimeoutError("Timeout reading from socket"),
        rx.ClusterDownError("The cluster is down"),
        rx.MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
        rx.TryAgainError("Multiple keys request during rehashing of slot"),
        rx.BusyLoadingError("Redis is loading the dataset in memory"),
        rx.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        rx.ResponseError("BUSY Redis is busy running a script."),
        ConnectionResetError(104, "Connection reset by peer"),
        asyncio.TimeoutError(),
    ],
)
def test_outages_go_to_the_failure_policy(error: Exception) -> None:
    verdict = classify(error)
    assert verdict.kind == "outage" and verdict.fix == ""


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (rx.AuthenticationError("invalid username-password pair or user is disabled."), "username and password"),
        (rx.AuthenticationError("Authentication required."), "username and password"),
        (rx.NoPermissionError("this user has no permissions to run the 'evalsha' command"), "ACL SETUSER"),
        (rx.MovedError("3999 127.0.0.1:6381"), "redis.cluster.RedisCluster"),
        (rx.AskError("3999 127.0.0.1:6381"), "redis.cluster.RedisCluster"),
    ],
)
def test_mistakes_say_what_to_fix(error: Exception, fix: str) -> None:
    verdict = classify(error)
    assert verdict.kind == "mistake" and fix in verdict.fix


def test_an_authentication_error_is_a_mistake_though_it_is_a_connection_error() -> None:
    assert issubclass(rx.AuthenticationError, rx.ConnectionError)  # why the MRO order matters
    assert classify(rx.AuthenticationError("x")).kind == "mistake"
    assert classify(rx.MaxConnectionsError("Too many connections")).kind == "full"


def test_a_redirect_is_an_outage_on_a_cluster_client_and_a_mistake_on_a_plain_one() -> None:
    moved = rx.MovedError("3999 127.0.0.1:6381")
    assert classify(moved, cluster=True).kind == "outage"
    assert classify(moved, cluster=False).kind == "mistake"


def test_readonly_goes_to_the_failure_policy_but_names_the_fix() -> None:
    verdict = classify(rx.ReadOnlyError("You can't write against a read only replica."))
    assert verdict.kind == "outage" and "primary" in verdict.fix


def test_a_certificate_that_does_not_verify_is_a_mistake() -> None:
    def connect() -> None:
        try:
            raise ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
        except OSError as error:  # as redis-py's connect() wraps it
            raise rx.ConnectionError("Error 1 connecting to localhost:6380.") from error

    with pytest.raises(rx.ConnectionError) as info:
        connect()
    verdict = classify(info.value)
    assert verdict.kind == "mistake" and "ssl_ca_certs" in verdict.fix


def test_other_error_replies_are_refused_and_bugs_are_unknown() -> None:
    assert classify(rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")).kind == "refused"
    assert classify(rx.NoScriptError("No matching script.")).kind == "refused"
    assert classify(rx.DataError("Invalid input")).kind == "refused"
    assert classify(ValueError("a bug")).kind == "unknown"
    # The message's words decide nothing: a ResponseError saying TRYAGAIN is no outage.
    assert classify(rx.ResponseError("ERR TRYAGAIN CLUSTERDOWN in a script")).kind == "refused"


def test_a_redirection_redis_py_5_0_leaves_unmapped_is_still_a_redirection() -> None:
    moved = rx.ResponseError("MOVED 3999 127.0.0.1:6381")  # how a plain client of redis-py 5.0 raises it
    assert classify(moved, cluster=False) == classify(rx.MovedError("3999 127.0.0.1:6381"), cluster=False)
    assert classify(rx.ResponseError("ASK 3999 127.0.0.1:6381"), cluster=True).kind == "outage"


def _raised_in(module: str, error: BaseException) -> BaseException:
    """``error`` as raised by code of ``module`` (its innermost frame is there)."""
    namespace: dict[str, object] = {"__name__": module}
    exec("def fail(error):\n    raise error\n", namespace)  # a frame of that module
    try:
        namespace["fail"](error)  # type: ignore[operator]
    except BaseException as raised:
        return raised
    raise AssertionError("not raised")


def test_a_bug_inside_the_client_library_is_an_outage_with_its_fix_logged() -> None:
    # redis-py 8's cluster client raises AttributeError when ASK leads to a
    # primary holding no slot yet (redis-py issue 4015): calls must go on.
    for module in ("redis.cluster", "valkey.asyncio.cluster"):
        verdict = classify(_raised_in(module, AttributeError("'NoneType' object has no attribute 'name'")))
        assert verdict.kind == "outage" and "client library" in verdict.fix
    assert classify(_raised_in("myapp.redis_helpers", AttributeError("x"))).kind == "unknown"
    assert classify(AttributeError("never raised")).kind == "unknown"


def _valkey_exceptions() -> dict[str, type[Exception]]:
    """Stand-ins for valkey.exceptions: same names and hierarchy, another module."""

    def make(name: str, *bases: type[Exception]) -> type[Exception]:
        return type(name, bases or (Exception,), {"__module__": "valkey.exceptions"})

    base = make("ValkeyError")
    conn = make("ConnectionError", base)
    response = make("ResponseError", base)
    cluster_down = make("ClusterDownError", make("ClusterError", base), response)
    return {
        "ConnectionError": conn,
        "TimeoutError": make("TimeoutError", base),
        "AuthenticationError": make("AuthenticationError", conn),
        "ReadOnlyError": make("ReadOnlyError", response),
        "NoPermissionError": make("NoPermissionError", response),
        "MasterDownError": make("MasterDownError", cluster_down),
        "MovedError": make("MovedError", make("AskError", response)),
    }


def test_valkey_errors_classify_by_the_same_names() -> None:
    vk = _valkey_exceptions()
    kinds = {name: classify(cls("x")).kind for name, cls in vk.items()}
    assert kinds == {
        "ConnectionError": "outage",
        "TimeoutError": "outage",
        "AuthenticationError": "mistake",
        "ReadOnlyError": "outage",
        "NoPermissionError": "mistake",
        "MasterDownError": "outage",
        "MovedError": "mistake",
    }
    assert "primary" in classify(vk["ReadOnlyError"]("x")).fix
    # A class of that name in another module is not a Redis client's.
    foreign = type("AuthenticationError", (Exception,), {"__module__": "myapp.errors"})
    assert classify(foreign("x")).kind == "unknown"


# -- real servers set up wrong -------------------------------------------------


@pytest.fixture
def password_server() -> Iterator[RedisServer]:
    require_redis()
    with RedisServer(extra_args=("--requirepass", "right-password")) as server:
        yield server


@pytest.fixture
def replica_server(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A read-only replica of the session server."""
    with RedisServer(extra_args=("--replicaof", "127.0.0.1", str(redis_server.port))) as server:
        yield server


def _url(server: RedisServer, password: str | None = None) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{server.port}/0"


@pytest.mark.parametrize("on_failure", ["local", "allow", "fail"])
@pytest.mark.parametrize("password", ["wrong-password", None])
def test_a_wrong_or_missing_password_raises_what_to_fix_whatever_the_policy(
    password_server: RedisServer, bucket_key: str, on_failure: str, password: str | None
) -> None:
    bucket = RedisTokenBucket.from_url(_url(password_server, password), key=bucket_key, rate=10, on_failure=on_failure)
    try:
        with pytest.raises(BucketUnavailableError, match="check the username and password") as info:
            bucket.reserve()
        assert "wrong-password" not in str(info.value)
        assert bucket.shared  # Redis answered: no outage
    finally:
        bucket.close()
    good = RedisTokenBucket.from_url(_url(password_server, "right-password"), key=bucket_key, rate=10)
    try:
        assert good.reserve() is not None and good.shared
    finally:
        good.close()


async def test_a_wrong_password_raises_on_the_asyncio_bucket_too(password_server: RedisServer, bucket_key: str) -> None:
    bucket = AsyncRedisTokenBucket.from_url(_url(password_server, "wrong-password"), key=bucket_key, rate=10)
    try:
        with pytest.raises(BucketUnavailableError, match="check the username and password"):
            await bucket.reserve()
    finally:
        await bucket.aclose()


def test_a_missing_acl_permission_raises_what_to_fix(own_redis_server: RedisServer, bucket_key: str) -> None:
    admin = redis.Redis.from_url(own_redis_server.url)
    admin.acl_setuser("limited", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-evalsha"])
    admin.close()
    url = f"redis://limited:pw@127.0.0.1:{own_redis_server.port}/0"
    bucket = RedisTokenBucket.from_url(url, key=bucket_key, rate=10, on_failure="local")
    try:
        with pytest.raises(BucketUnavailableError, match="ACL SETUSER"):
            bucket.reserve()
    finally:
        bucket.close()


def test_a_read_only_replica_falls_back_and_logs_the_fix_once(
    replica_server: RedisServer, bucket_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = RedisTokenBucket.from_url(replica_server.url, key=bucket_key, rate=10, cooldown=0.0)
    try:
        with caplog.at_level(logging.ERROR, logger="grpc_throttle"):
            first, second = bucket.reserve(), bucket.reserve()
        assert isinstance(first, Reservation) and isinstance(second, Reservation)  # the local fallback
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "point it at the primary" in errors[0].getMessage()
    finally:
        bucket.close()


def test_a_read_only_replica_with_fail_policy_raises_what_to_fix(replica_server: RedisServer, bucket_key: str) -> None:
    bucket = RedisTokenBucket.from_url(replica_server.url, key=bucket_key, rate=10, on_failure="fail")
    try:
        with pytest.raises(BucketUnavailableError, match=r"ReadOnlyError.*point it at the primary"):
            bucket.reserve()
    finally:
        bucket.close()
