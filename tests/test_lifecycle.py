"""Process lifecycle and accepted-means-usable numbers: fork, interpreter shutdown, bounds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

from grpc_throttle import AdaptiveRate, RetryPolicy, ThrottlingInterceptor, TokenBucket
from tests.scripted import EchoServer

SRC = str(Path(__file__).resolve().parent.parent / "src")


# -- numbers that pass validation work later -----------------------------------


def test_a_huge_multiplier_caps_the_backoff_instead_of_overflowing() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff=1, max_backoff=15, multiplier=1e12, jitter=False)
    assert [policy.backoff(n) for n in (1, 2, 3, 999)] == [1, 15, 15, 15]
    with pytest.raises(ValueError, match="multiplier"):
        RetryPolicy(multiplier=1e200)


@pytest.mark.parametrize("rate", [1e-320, 0.0, -1, 1e300, float("nan"), 10**400])
def test_rates_that_cannot_be_paced_are_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be a number"):
        TokenBucket(rate=rate)


def test_an_integer_too_large_for_a_float_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="capacity"):
        TokenBucket(rate=1, capacity=10**400)
    with pytest.raises(ValueError, match="initial_backoff"):
        RetryPolicy(initial_backoff=10**400)
    with pytest.raises(ValueError, match="probe_time"):
        AdaptiveRate(probe_time=10**400)


def test_the_smallest_accepted_rate_paces_with_finite_waits() -> None:
    bucket = TokenBucket(rate=1e-9, clock=lambda: 0.0)
    assert bucket.reserve() is not None
    second = bucket.reserve()
    assert second is not None and second.delay == pytest.approx(1e9)


# -- fork: a child forked while other threads hold the locks does not deadlock --


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_a_child_forked_under_load_can_use_the_bucket_and_the_counters() -> None:
    bucket = TokenBucket(rate=1e6)
    interceptor = ThrottlingInterceptor(bucket)
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            reservation = bucket.reserve()
            if reservation is not None:
                reservation.cancel()
            interceptor._settings.stats.add("calls")
            interceptor.stats()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    children = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() with threads
            for _ in range(20):
                pid = os.fork()
                if pid == 0:  # the child: every lock must be free
                    try:
                        bucket.reserve()
                        interceptor._settings.stats.add("calls")
                        interceptor.stats()
                    finally:
                        os._exit(0)
                children.append(pid)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    deadline = time.monotonic() + 20
    statuses = {}
    while children and time.monotonic() < deadline:
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                statuses[pid] = status
                children.remove(pid)
        time.sleep(0.01)
    for pid in children:  # deadlocked: kill so the suite goes on, then fail
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert not children, f"{len(children)} of 20 forked children deadlocked"
    assert all(os.waitstatus_to_exitcode(s) == 0 for s in statuses.values())


# -- interpreter shutdown: pending futures still resolve -------------------------


def test_pending_futures_resolve_after_the_main_thread_returns(echo_server: EchoServer) -> None:
    # The server runs here: a server inside the client's process could not
    # serve after its interpreter began shutting down either.
    script = textwrap.dedent(
        """
        import sys, threading, grpc
        from grpc_throttle import ThrottledChannel, ThrottlingInterceptor, TokenBucket
        from grpc_throttle.testing import echo_pb2, echo_pb2_grpc

        bucket = TokenBucket(rate=4)
        bucket.try_acquire()
        channel = ThrottledChannel(grpc.insecure_channel(sys.argv[1]), ThrottlingInterceptor(bucket))
        stub = echo_pb2_grpc.EchoStub(channel)
        futures = [stub.Unary.future(echo_pb2.EchoRequest(text=f"{i}:ok")) for i in range(3)]

        def wait() -> None:
            print("codes", [f.code().name for f in futures], flush=True)
            channel.close()

        threading.Thread(target=wait).start()
        # the main thread returns here, with the futures still waiting for tokens
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    result = subprocess.run(
        [sys.executable, "-c", script, echo_server.target], capture_output=True, text=True, timeout=60, env=env
    )
    assert "codes ['OK', 'OK', 'OK']" in result.stdout, result.stderr
    assert "cannot schedule new futures" not in result.stderr
