"""The Redis buckets when a Redis Cluster master dies: failover to its replica, and CLUSTERDOWN.

Each test starts a cluster of its own (about 2 s) with a short
``cluster-node-timeout``, so that the cluster notices a dead master within
seconds, and SIGKILLs a master while calls keep coming. A slot migrating is
in test_redis_cluster_migration.py. Each test prints what it measured
(``pytest -s``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from redis.crc import key_slot

from grpc_throttle.buckets.local import Reservation
from grpc_throttle.buckets.redis import RedisReservation, RedisTokenBucket
from grpc_throttle.buckets.redis_aio import RedisTokenBucket as AsyncRedisTokenBucket
from grpc_throttle.errors import BucketUnavailableError
from tests.redis_cluster_ops import SLOT_REFRESH_LEAKS, key_exists, replica_of, role, slot_owner, wait_for_new_owner
from tests.redis_server import RedisCluster, RedisServer, require_redis

pytestmark = SLOT_REFRESH_LEAKS

#: The buckets' rate: one interval (0.1 s) dwarfs a noisy machine's jitter.
RATE = 10.0
#: The buckets' timeout: the longest an outage call should wait on a socket.
TIMEOUT = 0.2
#: Reservations queued before the kill: ten seconds of the schedule, past any failover here.
BACKLOG = 100
#: Milliseconds before a node counts as failing (Redis's default is 15 s).
NODE_TIMEOUT_MS = 1000


def _kwargs(key: str) -> dict[str, Any]:
    return dict(key=key, rate=RATE, timeout=TIMEOUT, cooldown=0.1, on_failure="local")


def _live_url(cluster: RedisCluster) -> str:
    """The URL of a node that runs (the cluster's own URL may name a dead one)."""
    return next(node for node in cluster.nodes if node.running).url


@dataclass
class Failover:
    """What the calls saw from a master's SIGKILL until the bucket was shared again."""

    #: The master of the bucket's slot, and the replica that takes over.
    master: RedisServer
    replica: RedisServer
    #: When the master was killed (time.monotonic).
    killed: float = 0.0
    #: Seconds from the kill until the replica said it was master (None: not seen before ``back``).
    promoted: float | None = None
    #: Seconds from the kill until a call got a shared reservation again.
    back: float = 0.0
    #: Calls that got the local fallback meanwhile.
    fallback: int = 0
    #: The slowest of all those calls, seconds.
    slowest: float = 0.0

    def kill(self) -> None:
        with redis.Redis(host="127.0.0.1", port=self.master.port) as plain:
            assert plain.wait(1, 5000) == 1  # the replica has the schedule
        self.killed = time.monotonic()
        self.master.kill()

    def watch(self) -> None:
        """Before each call: note when the replica is promoted, and bound the wait."""
        elapsed = time.monotonic() - self.killed
        if self.promoted is None and role(self.replica) == "master":
            self.promoted = elapsed
        assert elapsed < 20, "the bucket never came back to Redis"

    def took(self, began: float, reservation: object) -> bool:
        """Record a call; True once it got a shared reservation."""
        self.slowest = max(self.slowest, time.monotonic() - began)
        if isinstance(reservation, RedisReservation):
            self.back = time.monotonic() - self.killed
            return True
        assert isinstance(reservation, Reservation)  # the local fallback's slot
        reservation.cancel()  # so that the fallback's queue does not grow past max_wait
        self.fallback += 1
        return False

    def check(self, cluster: RedisCluster, key: str) -> None:
        """The calls fell back quickly, and the replica now serves the slot with the key on it."""
        assert self.fallback > 0  # the master was really gone for a while
        # Each outage call took the timeout and a connect at most: never redis-py's retries.
        assert self.slowest < TIMEOUT + 1.0, self.slowest
        assert wait_for_new_owner(cluster, key_slot(key.encode()), self.master, 5) is self.replica
        assert key_exists(self.replica, key)

    def report(self, name: str) -> None:
        seen = "unseen" if self.promoted is None else f"{self.promoted:.2f} s"
        print(
            f"{name}: replica promoted after {seen}, shared again after {self.back:.2f} s; "
            f"{self.fallback} fallback calls, slowest {self.slowest * 1000:.1f} ms"
        )


def _failover(cluster: RedisCluster, key: str) -> Failover:
    master = slot_owner(cluster, key_slot(key.encode()))
    assert master is not None
    return Failover(master, replica_of(cluster, master))


def test_a_killed_master_falls_back_at_once_and_shares_again_on_its_promoted_replica(bucket_key: str) -> None:
    """SIGKILL the master of the bucket's slot: every call falls back within about the timeout,
    and once its replica is promoted the bucket is shared again, on the dead master's schedule."""
    require_redis(cluster=True)
    with RedisCluster(replicas=1, node_timeout_ms=NODE_TIMEOUT_MS) as cluster:
        client = redis.cluster.RedisCluster.from_url(cluster.url)
        bucket = RedisTokenBucket(client, **_kwargs(bucket_key))
        try:
            queued = [bucket.reserve() for _ in range(BACKLOG)]
            assert all(isinstance(r, RedisReservation) for r in queued)
            failover = _failover(cluster, bucket.key)
            failover.kill()
            while True:
                failover.watch()
                began = time.monotonic()
                reservation = bucket.reserve(max_wait=60)
                if failover.took(began, reservation):
                    break
                time.sleep(0.05)
            assert bucket.shared
            failover.check(cluster, bucket.key)
            # The promoted replica goes on from the dead master's schedule, for this process and a new one.
            assert isinstance(reservation, RedisReservation)
            assert reservation.ready_at >= queued[-1].ready_at + 0.9 / RATE  # type: ignore[union-attr]
            fresh_client = redis.cluster.RedisCluster.from_url(_live_url(cluster))
            fresh = RedisTokenBucket(fresh_client, **_kwargs(bucket_key))
            first = fresh.reserve(max_wait=60)
            fresh.close()
            fresh_client.close()
            assert isinstance(first, RedisReservation)
            assert first.ready_at >= reservation.ready_at + 0.9 / RATE
        finally:
            bucket.close()
            client.close()
    failover.report("killed master, sync")


async def test_a_killed_master_falls_back_at_once_and_shares_again_on_its_promoted_replica_asyncio(
    bucket_key: str,
) -> None:
    require_redis(cluster=True)
    with RedisCluster(replicas=1, node_timeout_ms=NODE_TIMEOUT_MS) as cluster:
        client = redis.asyncio.cluster.RedisCluster.from_url(cluster.url)
        bucket = AsyncRedisTokenBucket(client, **_kwargs(bucket_key))
        try:
            queued = [await bucket.reserve() for _ in range(BACKLOG)]
            assert all(isinstance(r, RedisReservation) for r in queued)
            failover = _failover(cluster, bucket.key)
            failover.kill()
            while True:
                failover.watch()
                began = time.monotonic()
                reservation = await bucket.reserve(max_wait=60)
                if failover.took(began, reservation):
                    break
                await asyncio.sleep(0.05)
            assert bucket.shared
            failover.check(cluster, bucket.key)
            assert isinstance(reservation, RedisReservation)
            assert reservation.ready_at >= queued[-1].ready_at + 0.9 / RATE  # type: ignore[union-attr]
        finally:
            await bucket.aclose()
            await client.aclose()
    failover.report("killed master, asyncio")


def _shared_again(bucket: RedisTokenBucket) -> bool:
    try:
        return isinstance(bucket.reserve(), RedisReservation)
    except BucketUnavailableError:  # on_failure="fail", still down
        return False


def test_clusterdown_is_an_outage_for_every_bucket_and_no_call_hangs(bucket_key: str) -> None:
    """Kill a master that has no replica: its slots are uncovered, and with
    cluster-require-full-coverage (the default) every master answers CLUSTERDOWN. A bucket
    on a live master's slot meets ClusterDownError, one on the dead master's slot a
    refused connection; both are outages: "local" falls back, "fail" raises
    BucketUnavailableError, and no call takes long. Restarted, the master rejoins and
    the buckets are shared again by themselves."""
    require_redis(cluster=True)
    with RedisCluster(node_timeout_ms=NODE_TIMEOUT_MS) as cluster:
        keys = [f"{bucket_key}-{i}" for i in range(64)]
        owners = {key: slot_owner(cluster, key_slot(f"grpc-throttle:{key}".encode())) for key in keys}
        victim = owners[keys[0]]
        assert victim is not None
        on_live = next(key for key in keys if owners[key] is not victim)
        client = redis.cluster.RedisCluster.from_url(_live_url(cluster))
        buckets = {
            (key, policy): RedisTokenBucket(client, **{**_kwargs(key), "on_failure": policy})
            for key in (keys[0], on_live)
            for policy in ("local", "fail")
        }
        try:
            for bucket in buckets.values():
                assert isinstance(bucket.reserve(), RedisReservation)
            killed = time.monotonic()
            victim.kill()
            survivor = next(node for node in cluster.nodes if node.running)
            while b"cluster_state:fail" not in survivor.command(b"CLUSTER INFO"):
                assert time.monotonic() - killed < 10, "the cluster never went down"
                time.sleep(0.05)
            down = time.monotonic() - killed
            slowest, errors = 0.0, {key: set[str]() for key, _ in buckets}
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                for (key, policy), bucket in buckets.items():
                    began = time.monotonic()
                    if policy == "local":
                        assert isinstance(bucket.reserve(), Reservation) and not bucket.shared
                    else:
                        with pytest.raises(BucketUnavailableError, match="on_failure='fail'") as info:
                            bucket.reserve()
                        errors[key].add(str(info.value))
                    slowest = max(slowest, time.monotonic() - began)
                time.sleep(0.02)
            # How redis-py surfaces each: the live master's CLUSTERDOWN reply, the dead master's socket.
            assert any("ClusterDownError" in error for error in errors[on_live]), errors[on_live]
            assert any("ConnectionError" in error for error in errors[keys[0]]), errors[keys[0]]
            # redis-py pauses 0.25 s and re-reads the slot map before it raises ClusterDownError.
            assert slowest < 1.5, slowest
            restarted = time.monotonic()
            victim.start()  # its nodes.conf is kept: it rejoins with its slots
            while not all(_shared_again(bucket) for bucket in buckets.values()):
                assert time.monotonic() - restarted < 20, "the buckets never came back to Redis"
                time.sleep(0.1)
            again = time.monotonic() - restarted
        finally:
            for bucket in buckets.values():
                bucket.close()
            client.close()
    print(
        f"CLUSTERDOWN {down:.2f} s after the kill; slowest call {slowest * 1000:.0f} ms; "
        f"shared again {again:.2f} s after the restart"
    )
