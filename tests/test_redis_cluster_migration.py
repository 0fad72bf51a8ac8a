"""The Redis buckets while their slot migrates to another master of a Redis Cluster.

The session's cluster, changed step by step with the raw commands
``redis-cli --cluster reshard`` sends (``tests.redis_cluster_ops``) while
calls keep coming; it is left whole. Killed masters and CLUSTERDOWN are in
test_redis_cluster_failover.py. Each test prints what it measured (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio.cluster
import redis.cluster
from redis.crc import key_slot

from grpc_throttle.buckets._redis_config import SHAS
from grpc_throttle.buckets.redis import RedisReservation, RedisTokenBucket
from grpc_throttle.buckets.redis_aio import RedisTokenBucket as AsyncRedisTokenBucket
from tests.redis_cluster_ops import (
    SLOT_REFRESH_LEAKS,
    Migration,
    key_exists,
    masters,
    migrate_slot,
    node_id,
    slot_owner,
)
from tests.redis_server import RedisCluster, RedisServer, free_port, require_redis

pytestmark = SLOT_REFRESH_LEAKS

#: The buckets' rate: slow enough that one interval (0.1 s) dwarfs a noisy machine's jitter.
RATE = 10.0
#: Seconds the migrating slot stays split (its keys moved, the slot not yet handed over).
HOLD = 1.0


@dataclass(frozen=True)
class Call:
    """One call made while the cluster changed."""

    #: When it started (time.monotonic).
    began: float
    #: Seconds it took.
    took: float
    #: What it returned, or what it raised.
    outcome: object


def _summary(calls: Sequence[Call], migration: Migration) -> tuple[list[Call], list[Call]]:
    """The calls that began during the migration, and those of them that began after the keys moved."""
    during = [call for call in calls if migration.began <= call.began <= migration.ended]
    return during, [call for call in during if call.began >= migration.keys_moved]


def _check_one_schedule(calls: Sequence[Call], migration: Migration) -> list[RedisReservation]:
    """Every call returned a shared reservation, and all of them form one schedule across the migration."""
    raised = [call.outcome for call in calls if isinstance(call.outcome, BaseException)]
    assert not raised, raised[:3]
    local = [call.outcome for call in calls if not isinstance(call.outcome, RedisReservation)]
    assert not local, f"{len(local)} calls fell back to local: {local[:3]}"
    _, split = _summary(calls, migration)
    assert len(split) >= 5, "too few calls met the split slot to test it"
    # Redis's own schedule (start, end in microseconds): no slot handed out twice. A
    # schedule lost on the way (the key recreated on the new owner) would start again
    # at "now", seconds before the tail the calls had built up.
    reservations = [call.outcome for call in calls if isinstance(call.outcome, RedisReservation)]
    places = sorted(reservation._place for reservation in reservations)
    overlaps = [(a, b) for a, b in itertools.pairwise(places) if b[0] < a[1] - 1]
    assert not overlaps, overlaps[:3]
    return reservations


def _check_still_shared(after: Sequence[object], backlog: Sequence[RedisReservation]) -> None:
    """Reservations made by two buckets (alternating) after the migration queue behind the
    backlog and are spaced 1/RATE apart, on the public clock."""
    assert all(isinstance(r, RedisReservation) for r in after), after
    ready = [r.ready_at for r in after if isinstance(r, RedisReservation)]
    assert ready[0] > max(r.ready_at for r in backlog) + 0.5 / RATE
    gaps = [b - a for a, b in itertools.pairwise(ready)]
    assert all(0.5 / RATE < gap < 1.5 / RATE for gap in gaps), gaps


def _keep_calling(bucket: RedisTokenBucket, calls: list[Call], stop: threading.Event) -> None:
    """Reserve every 10 ms until ``stop``, noting each call (what it raised, too)."""
    while not stop.is_set():
        began = time.monotonic()
        try:
            outcome: object = bucket.reserve()
        except Exception as error:
            outcome = error
        calls.append(Call(began, time.monotonic() - began, outcome))
        time.sleep(0.01)


def _report(name: str, calls: Sequence[Call], migration: Migration) -> None:
    during, split = _summary(calls, migration)
    slowest = max(call.took for call in during)
    print(
        f"{name}: migration {migration.ended - migration.began:.3f} s ({migration.keys} keys, "
        f"split {migration.ended - migration.keys_moved:.3f} s); {len(during)} calls during it, "
        f"{len(split)} through ASK, slowest {slowest * 1000:.1f} ms; {len(calls)} calls in all"
    )


def _target(cluster: RedisCluster, key: str) -> tuple[int, RedisServer]:
    """The key's slot, and a master that does not serve it and knows no script yet (as a new
    master would; on the session's cluster, earlier tests' buckets loaded them on every master)."""
    slot = key_slot(key.encode())
    source = slot_owner(cluster, slot)
    target = next(node for node in masters(cluster) if node is not source)
    with redis.Redis(host="127.0.0.1", port=target.port) as client:
        client.script_flush()
    return slot, target


def test_calls_during_a_slot_migration_stay_on_one_shared_schedule(
    redis_cluster: RedisCluster, bucket_key: str
) -> None:
    """While the bucket's slot migrates, its calls follow ASK to the importing master, which
    has never seen the bucket's scripts: they must still run there, with no fallback."""
    clients = [redis.cluster.RedisCluster.from_url(redis_cluster.url) for _ in range(2)]
    kwargs: dict[str, Any] = dict(key=bucket_key, rate=RATE, timeout=1.0, on_failure="local")
    buckets = [RedisTokenBucket(client, **kwargs) for client in clients]
    calls: list[Call] = []
    stop = threading.Event()

    try:
        for bucket in buckets:
            assert isinstance(bucket.reserve(), RedisReservation)  # the key exists, the scripts are loaded
        slot, target = _target(redis_cluster, buckets[0].key)
        threads = [
            threading.Thread(target=_keep_calling, args=(bucket, calls, stop)) for bucket in buckets for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.2)
            migration = migrate_slot(redis_cluster, slot, target, hold=HOLD)
            time.sleep(0.2)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        backlog = _check_one_schedule(calls, migration)
        assert all(bucket.shared for bucket in buckets)
        assert slot_owner(redis_cluster, slot) is target and key_exists(target, buckets[0].key)
        _check_still_shared([buckets[i % 2].reserve() for i in range(4)], backlog)
        _report("sync", calls, migration)
    finally:
        for bucket in buckets:
            bucket.close()
        for client in clients:
            client.close()


async def test_calls_during_a_slot_migration_stay_on_one_shared_schedule_asyncio(
    redis_cluster: RedisCluster, bucket_key: str
) -> None:
    """The asyncio twin. One bucket calls from one task, and all its calls stay shared; the other
    calls from three tasks at once, where redis-py's asyncio cluster client (8.2) may send ASKING
    and the command on two connections of the importing master, which then answers MOVED back
    until redis-py gives up ("TTL exhausted"): those calls may fall back, but none may raise."""
    clients = [redis.asyncio.cluster.RedisCluster.from_url(redis_cluster.url) for _ in range(2)]
    kwargs: dict[str, Any] = dict(key=bucket_key, rate=RATE, timeout=1.0, cooldown=0.1, on_failure="local")
    alone, crowded = (AsyncRedisTokenBucket(client, **kwargs) for client in clients)
    calls: dict[AsyncRedisTokenBucket, list[Call]] = {alone: [], crowded: []}
    stop = asyncio.Event()

    async def call(bucket: AsyncRedisTokenBucket) -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                outcome: object = await bucket.reserve()
            except Exception as error:
                outcome = error
            calls[bucket].append(Call(began, time.monotonic() - began, outcome))
            await asyncio.sleep(0.01)

    try:
        for bucket in calls:
            assert isinstance(await bucket.reserve(), RedisReservation)
        slot, target = _target(redis_cluster, alone.key)
        tasks = [asyncio.create_task(call(bucket)) for bucket in (alone, crowded, crowded, crowded)]
        try:
            await asyncio.sleep(0.2)
            migration = await asyncio.to_thread(migrate_slot, redis_cluster, slot, target, hold=HOLD)
            await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        backlog = _check_one_schedule(calls[alone], migration)
        crowd = calls[crowded]
        raised = [call.outcome for call in crowd if isinstance(call.outcome, BaseException)]
        assert not raised, raised[:3]
        shared = [call.outcome for call in crowd if isinstance(call.outcome, RedisReservation)]
        _check_one_schedule([*calls[alone], *(call for call in crowd if call.outcome in shared)], migration)
        assert slot_owner(redis_cluster, slot) is target and key_exists(target, alone.key)
        await asyncio.sleep(0.15)  # past the crowded bucket's cooldown, if it fell back
        _check_still_shared([await (alone, crowded)[i % 2].reserve() for i in range(4)], [*backlog, *shared])
        assert alone.shared and crowded.shared
        _report("asyncio, one task", calls[alone], migration)
        _report(f"asyncio, three tasks ({len(crowd) - len(shared)} fell back)", crowd, migration)
    finally:
        for bucket in calls:
            await bucket.aclose()
        for client in clients:
            await client.aclose()


def test_a_script_reloads_on_every_primary_but_a_hung_one_costs_one_timeout(
    redis_cluster: RedisCluster, bucket_key: str
) -> None:
    """A load (after NOSCRIPT) reaches the owner and every other primary; one that hangs is
    skipped after the bucket's timeout and does not fail the call."""
    timeout = 0.3
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    bucket = RedisTokenBucket(client, key=bucket_key, rate=RATE, timeout=timeout, on_failure="fail")
    owner = slot_owner(redis_cluster, key_slot(bucket.key.encode()))
    assert owner is not None
    hung, healthy = (node for node in masters(redis_cluster) if node is not owner)
    for node in (owner, healthy):
        with redis.Redis(host="127.0.0.1", port=node.port) as plain:
            plain.script_flush()
    hung.pause()
    try:
        began = time.monotonic()
        assert isinstance(bucket.reserve(), RedisReservation)
        took = time.monotonic() - began
    finally:
        hung.resume()
        bucket.close()
        client.close()
    assert took < timeout + 1.0, took  # one timeout for the hung primary, not one per script try
    with redis.Redis(host="127.0.0.1", port=healthy.port) as plain:
        assert plain.script_exists(SHAS["reserve"]) == [True]  # the script reached it too
    print(f"reload with a hung primary: {took * 1000:.0f} ms")


def test_a_slot_migrating_to_a_new_empty_master_never_raises(bucket_key: str) -> None:
    """A master that joined with no slots is missing from redis-py's slot map, so its cluster
    client cannot follow ASK there: it raises AttributeError from inside itself (redis-py issue
    4015). The bucket must treat that as an outage (calls fall back), and share again once the
    slot has changed hands. A cluster of its own: the session's keeps three masters."""
    require_redis(cluster=True)
    with RedisCluster() as cluster:
        newcomer = RedisServer(
            extra_args=(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                str(free_port()),
            )
        )
        newcomer.start()
        cluster.nodes.append(newcomer)  # closed with the cluster
        first = cluster.nodes[0]
        me = next(line for line in _lines_of(first).splitlines() if "myself" in line)
        bus = int(me.split()[1].split("@")[1].split(",")[0])  # not port + 10000 here: MEET must be told
        with redis.Redis(host="127.0.0.1", port=newcomer.port) as client:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", first.port, bus)
        deadline = time.monotonic() + 20
        # Joined once every master knows it and it sees the cluster whole (else MIGRATE to it
        # meets CLUSTERDOWN on a busy machine).
        while not (
            all(node_id(newcomer) in _lines_of(node) for node in cluster.nodes[:3])
            and b"cluster_state:ok" in newcomer.command(b"CLUSTER INFO")
            and _lines_of(newcomer).count("master") >= 4
        ):
            assert time.monotonic() < deadline, "the new master did not join"
            time.sleep(0.05)
        client = redis.cluster.RedisCluster.from_url(cluster.url)
        bucket = RedisTokenBucket(client, key=bucket_key, rate=RATE, timeout=1.0, cooldown=0.1, on_failure="local")
        calls: list[Call] = []
        stop = threading.Event()

        try:
            assert isinstance(bucket.reserve(), RedisReservation)
            slot = key_slot(bucket.key.encode())
            thread = threading.Thread(target=_keep_calling, args=(bucket, calls, stop))
            thread.start()
            try:
                time.sleep(0.2)
                migration = migrate_slot(cluster, slot, newcomer, hold=0.5)
                time.sleep(0.3)
            finally:
                stop.set()
                thread.join()
            raised = [call.outcome for call in calls if isinstance(call.outcome, BaseException)]
            assert not raised, raised[:3]
            assert slot_owner(cluster, slot) is newcomer and key_exists(newcomer, bucket.key)
            deadline = time.monotonic() + 10
            while not isinstance(bucket.reserve(), RedisReservation):
                assert time.monotonic() < deadline, "not shared again on the new master"
                time.sleep(0.05)
            fell_back = sum(not isinstance(call.outcome, RedisReservation) for call in calls)
            _report(f"to an empty master ({fell_back} fell back)", calls, migration)
        finally:
            bucket.close()
            client.close()


def _lines_of(node: RedisServer) -> str:
    with redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True) as client:
        return str(client.execute_command("CLUSTER", "NODES"))
