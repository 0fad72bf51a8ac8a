"""End to end: 4 processes x 4 threads, each process with its own interceptor over one Redis key.

Every process paces its calls with ``ThrottlingInterceptor(RedisTokenBucket(key=same,
rate=Q))`` and calls ``ListModelTypes`` on one Clarifai emulator enforcing Q calls/s
for the one PAT they all use. Together they must hold Q: the emulator admits about
Q per second, answers next to nothing "throttled", and every call ends in SUCCESS,
also while Redis is killed and restarted under them (``on_failure="local"``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import grpc_throttle
from grpc_throttle.testing import ClarifaiEmulator, user_key
from tests.redis_server import RedisServer

#: The quota, per second, of the emulator and of the shared bucket.
Q = 40.0
PROCESSES, THREADS = 4, 4
PAT = "end-to-end-pat"

WORKER = r"""
import json, sys, threading, time
import grpc
from clarifai_grpc.channel.clarifai_channel import ClarifaiChannel
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from grpc_throttle import ThrottlingInterceptor
from grpc_throttle.buckets.redis import RedisTokenBucket

target, url, key, pat = sys.argv[1:5]
rate, calls, threads = float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
ClarifaiChannel.get_insecure_grpc_channel(base="127.0.0.1", port=1).close()  # lets V2Stub work
bucket = RedisTokenBucket.from_url(url, key=key, rate=rate, on_failure="local", cooldown=0.3, timeout=0.5)
interceptor = ThrottlingInterceptor(bucket)
raw = grpc.insecure_channel(target)
grpc.channel_ready_future(raw).result(timeout=30)
stub = service_pb2_grpc.V2Stub(grpc.intercept_channel(raw, interceptor))
bucket.available()  # connected, scripts loaded
print("ready", flush=True)
start = float(sys.stdin.readline())
metadata = (("authorization", "Key " + pat),)
ok, lost, errors = [0] * threads, [0] * threads, []
done = threading.Event()
seen = {"down": False, "back": False}

def run(i):
    while time.time() < start:
        time.sleep(0.001)
    for _ in range(calls):
        try:
            reply = stub.ListModelTypes(service_pb2.ListModelTypesRequest(), metadata=metadata, timeout=60)
        except grpc.RpcError as error:
            lost[i] += 1
            errors.append(str(error.code()))
            continue
        if reply.status.code == status_code_pb2.SUCCESS:
            ok[i] += 1
        else:
            lost[i] += 1
            errors.append(str(reply.status.code))

def watch():
    while not done.is_set():
        if not bucket.shared:
            seen["down"] = True
        elif seen["down"]:
            seen["back"] = True
        time.sleep(0.002)

workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
watcher = threading.Thread(target=watch)
watcher.start()
for t in workers:
    t.start()
for t in workers:
    t.join()
done.set()
watcher.join()
stats = interceptor.stats()
print(json.dumps({
    "ok": sum(ok), "lost": sum(lost), "errors": errors[:5], "shared": bucket.shared,
    "saw_down": seen["down"], "back": seen["back"], "retries": stats.retries, "end": time.time(),
}), flush=True)
"""


class Workers:
    """The worker processes, started and connected, waiting for the go."""

    def __init__(self, target: str, url: str, key: str, calls_per_thread: int) -> None:
        src = str(Path(grpc_throttle.__file__).parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
        args = [target, url, key, PAT, str(Q), str(calls_per_thread), str(THREADS)]
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(PROCESSES)
        ]
        for process in self.processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"

    def go(self) -> float:
        """Start every worker at the same moment, 0.3 s from now; that moment (time.time)."""
        start = time.time() + 0.3
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(f"{start}\n")
            process.stdin.flush()
        return start

    def results(self) -> list[dict[str, Any]]:
        out = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in self.processes]
        assert all(p.returncode == 0 for p in self.processes)
        return out

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def emulator() -> Iterator[ClarifaiEmulator]:
    with ClarifaiEmulator(rate=Q) as emu:
        yield emu


def run_workers(
    emulator: ClarifaiEmulator, server: RedisServer, key: str, calls_per_thread: int, outage: bool = False
) -> tuple[list[dict[str, Any]], float]:
    workers = Workers(emulator.target, server.url, key, calls_per_thread)
    try:
        start = workers.go()
        if outage:  # kill Redis a second in, bring it back a second later
            time.sleep(max(start + 1.0 - time.time(), 0))
            server.stop()
            time.sleep(1.0)
            server.start()
        results = workers.results()
    finally:
        workers.kill()
    return results, max(r["end"] for r in results) - start


def check_rate(emulator: ClarifaiEmulator, results: list[dict[str, Any]], calls: int) -> list[float]:
    """No call lost, few throttled answers; the admission times, for rate checks."""
    assert sum(r["lost"] for r in results) == 0, [r["errors"] for r in results]
    assert sum(r["ok"] for r in results) == calls
    counters = emulator.counters()
    assert counters.admitted == calls  # each call admitted exactly once
    assert counters.throttled <= 0.03 * (counters.admitted + counters.throttled), counters
    return emulator.admission_times(user_key(f"Key {PAT}"))


def busiest_second(times: list[float]) -> int:
    """The most calls admitted within any 1-second span."""
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_four_processes_of_four_threads_share_the_quota_through_redis(
    emulator: ClarifaiEmulator,
    redis_server: RedisServer,
    bucket_key: str,
) -> None:
    per_thread = 8
    calls = PROCESSES * THREADS * per_thread  # 128 calls: 3.2 s at Q = 40
    results, wall = run_workers(emulator, redis_server, bucket_key, per_thread)
    times = check_rate(emulator, results, calls)
    span = times[-1] - times[0]
    assert 0.8 * Q <= (len(times) - 1) / span <= 1.05 * Q, (len(times), span)
    assert busiest_second(times) <= 1.1 * Q + 2
    assert wall >= (calls - 1) / Q * 0.95  # nobody went faster than the shared schedule allows


def test_calls_go_on_while_redis_is_killed_and_restarted_then_the_buckets_share_again(
    emulator: ClarifaiEmulator,
    own_redis_server: RedisServer,
    bucket_key: str,
) -> None:
    per_thread = 10
    calls = PROCESSES * THREADS * per_thread  # 160 calls: 4 s at Q = 40, Redis away for 1 s of them
    results, _ = run_workers(emulator, own_redis_server, bucket_key, per_thread, outage=True)
    times = check_rate(emulator, results, calls)
    assert all(r["saw_down"] for r in results), results  # each process ran on its local share
    assert all(r["back"] and r["shared"] for r in results), results  # and went back to Redis by itself
    # Each handoff (to the local share, back to Redis) can overlap the slots the
    # old mode had queued, at most one per thread, with the new mode's: a burst
    # the server's allowance (Q) absorbs, as the throttled count above shows.
    assert busiest_second(times) <= Q + 2 * PROCESSES * THREADS + 2
