"""The channel builders against the Clarifai emulator, over real sockets."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2

import grpc_throttle.client
import grpc_throttle.client.aio
from grpc_throttle import RetryPolicy, TokenBucket
from grpc_throttle.client import (
    clarifai_channel,
    clarifai_insecure_channel,
    interceptor_of,
    shared_bucket,
    throttled_channel,
)
from grpc_throttle.client._common import channel_options, clarifai_target
from grpc_throttle.testing import ClarifaiEmulator, user_key

FAST_RETRY = RetryPolicy(max_attempts=20, initial_backoff=0.05, max_backoff=0.4)
SRC = str(Path(grpc_throttle.client.__file__).resolve().parents[2])


def new_pat() -> str:
    """A PAT no other test uses, so that no bucket is shared by accident."""
    return f"secret-pat-{uuid.uuid4().hex}"


def list_model_types(channel: grpc.Channel, **kwargs: Any) -> Any:
    return service_pb2_grpc.V2Stub(channel).ListModelTypes(service_pb2.ListModelTypesRequest(), timeout=30, **kwargs)


def run_python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.fixture
def emulator() -> Iterator[ClarifaiEmulator]:
    # A strict server (one call at a time, 5/s), so that a fast client is pushed back.
    with ClarifaiEmulator(rate=5, burst=1) as emu:
        yield emu


@pytest.fixture
def channels() -> Iterator[list[grpc.Channel]]:
    made: list[grpc.Channel] = []
    yield made
    for channel in made:
        channel.close()


def test_default_classification_retries_throttled_clarifai_answers(
    emulator: ClarifaiEmulator, channels: list[grpc.Channel]
) -> None:
    pat = new_pat()
    # Ten times the server's quota: the emulator must answer 11005 and we retry.
    channel = clarifai_insecure_channel(emulator.target, pat, bucket=TokenBucket(50), retry=FAST_RETRY)
    channels.append(channel)
    codes: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(3):
            reply = list_model_types(channel)
            with lock:
                codes.append(reply.status.code)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert codes == [status_code_pb2.SUCCESS] * 12
    stats = interceptor_of(channel).stats()
    admitted, throttled = emulator.counters().per_user[user_key(f"Key {pat}")]
    assert (stats.calls, admitted) == (12, 12)
    assert throttled > 0
    assert stats.throttled == throttled
    assert stats.retries == throttled
    assert stats.attempts == 12 + throttled
    assert stats.give_ups == 0


def test_the_pat_reaches_the_server_on_every_attempt(emulator: ClarifaiEmulator, channels: list[grpc.Channel]) -> None:
    pat = new_pat()
    channel = clarifai_insecure_channel(emulator.target, pat, bucket=TokenBucket(50), retry=FAST_RETRY)
    channels.append(channel)
    for _ in range(4):
        assert list_model_types(channel).status.code == status_code_pb2.SUCCESS
    stats = interceptor_of(channel).stats()
    counters = emulator.counters()
    assert stats.retries > 0  # retries happened, and each carried the key:
    assert counters.per_user == {user_key(f"Key {pat}"): (4, stats.throttled)}
    assert counters.admitted + counters.throttled == stats.attempts


def test_a_call_s_own_authorization_wins(emulator: ClarifaiEmulator, channels: list[grpc.Channel]) -> None:
    channel = clarifai_insecure_channel(emulator.target, new_pat(), bucket=TokenBucket(5))
    channels.append(channel)
    list_model_types(channel, metadata=(("authorization", "Key per-call"),))
    assert set(emulator.counters().per_user) == {user_key("Key per-call")}


def test_two_channels_with_one_pat_share_one_bucket_and_the_quota(channels: list[grpc.Channel]) -> None:
    pat, rate, calls = new_pat(), 6.0, 12
    with ClarifaiEmulator(rate=rate, burst=3) as emu:
        first = clarifai_insecure_channel(emu.target, pat, rate=rate)
        second = clarifai_insecure_channel(emu.target, pat, rate=rate)
        channels += [first, second]
        bucket = shared_bucket(pat)
        assert interceptor_of(first).bucket is bucket
        assert interceptor_of(second).bucket is bucket
        assert bucket.rate == rate

        def worker(channel: grpc.Channel) -> None:
            for _ in range(calls // 2):
                assert list_model_types(channel).status.code == status_code_pb2.SUCCESS

        started = time.monotonic()
        threads = [threading.Thread(target=worker, args=(c,)) for c in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        admitted, throttled = emu.counters().per_user[user_key(f"Key {pat}")]
    # One bucket paces both: ~(calls - 1) / rate. Two buckets would take half that.
    assert elapsed >= 0.8 * (calls - 1) / rate
    assert admitted == calls
    assert throttled <= 2  # the server's burst of 3 absorbs scheduling jitter


def test_two_pats_get_two_buckets(emulator: ClarifaiEmulator, channels: list[grpc.Channel]) -> None:
    pat_a, pat_b = new_pat(), new_pat()
    a = clarifai_insecure_channel(emulator.target, pat_a)
    b = clarifai_insecure_channel(emulator.target, pat_b)
    channels += [a, b]
    assert interceptor_of(a).bucket is shared_bucket(pat_a)
    assert interceptor_of(b).bucket is shared_bucket(pat_b)
    assert shared_bucket(pat_a) is not shared_bucket(pat_b)
    list_model_types(a)
    list_model_types(b)
    assert set(emulator.counters().per_user) == {user_key(f"Key {pat_a}"), user_key(f"Key {pat_b}")}


def test_no_pat_on_the_insecure_channel_means_anonymous_and_a_private_bucket(
    emulator: ClarifaiEmulator, channels: list[grpc.Channel], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLARIFAI_PAT", new_pat())  # never sent in plaintext
    a, b = clarifai_insecure_channel(emulator.target), clarifai_insecure_channel(emulator.target)
    channels += [a, b]
    assert interceptor_of(a).bucket is not interceptor_of(b).bucket
    list_model_types(a)
    assert set(emulator.counters().per_user) == {"anonymous"}


def test_shared_bucket_refuses_a_second_rate_for_one_user() -> None:
    pat = new_pat()
    bucket = shared_bucket(pat, rate=15)
    assert shared_bucket(pat) is bucket
    assert shared_bucket(pat, rate=15.0) is bucket
    with pytest.raises(ValueError, match=r"^rate 10 differs"):
        shared_bucket(pat, rate=10)
    with pytest.raises(ValueError, match=r"^capacity 5 differs"):
        shared_bucket(pat, capacity=5)
    own = TokenBucket(10)
    channel = clarifai_channel(pat, base="localhost:1", rate=10, bucket=own)
    assert interceptor_of(channel).bucket is own
    channel.close()


def test_missing_pat_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLARIFAI_PAT", raising=False)
    with pytest.raises(ValueError, match=r"pass pat= or set CLARIFAI_PAT"):
        clarifai_channel()
    with pytest.raises(ValueError, match=r"pass pat= or set CLARIFAI_PAT"):
        grpc_throttle.client.aio.clarifai_channel()
    with pytest.raises(ValueError, match=r"pass pat= or set CLARIFAI_PAT"):
        shared_bucket()


def test_the_pat_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    pat = new_pat()
    monkeypatch.setenv("CLARIFAI_PAT", pat + "\n")  # pasted with its newline
    channel = clarifai_channel(base="localhost:1")
    try:
        assert interceptor_of(channel).bucket is shared_bucket(pat) is shared_bucket()
    finally:
        channel.close()


@pytest.mark.parametrize("bad", ["", "   ", "two words", "line\nbreak", "caf\u00e9"])
def test_unusable_pats_are_refused_without_showing_them(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^pat must be") as info:
        clarifai_channel(bad, base="localhost:1")
    assert not bad.strip() or bad not in str(info.value)


def test_the_pat_never_appears_in_logs_or_reprs(
    emulator: ClarifaiEmulator, channels: list[grpc.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pat = new_pat()
    channel = clarifai_insecure_channel(emulator.target, pat, bucket=TokenBucket(50), retry=FAST_RETRY)
    channels.append(channel)
    for _ in range(3):
        list_model_types(channel)
    shown = caplog.text + repr(interceptor_of(channel)) + repr(shared_bucket(pat)) + repr(channel)
    assert pat not in shown


def test_throttled_channel_for_any_api(emulator: ClarifaiEmulator, channels: list[grpc.Channel]) -> None:
    channel = throttled_channel(emulator.target, rate=50, retry=FAST_RETRY, metadata=[("authorization", "Key generic")])
    channels.append(channel)
    grpc_throttle.client._common.prepare_clarifai_stubs()
    for _ in range(3):
        assert list_model_types(channel).status.code == status_code_pb2.SUCCESS
    assert interceptor_of(channel).bucket.rate == 50
    assert emulator.counters().per_user[user_key("Key generic")][0] == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0}, r"^rate must be"),
        ({"rate": 5, "capacity": 0.5}, r"^capacity must be"),
        ({"rate": 5, "metadata": [("Authorization", "x")]}, r"lowercase"),
        ({"rate": 5, "metadata": [("x-bin", "text")]}, r"must be bytes"),
        ({"rate": 5, "options": [("grpc.x",)]}, r"^options must be"),
        ({"rate": 5, "retry": "fast"}, r"^retry must be"),
    ],
)
def test_throttled_channel_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        throttled_channel("localhost:1", **kwargs)


def test_grpc_retries_are_off_unless_the_user_sets_them() -> None:
    assert ("grpc.enable_retries", 0) in channel_options((), clarifai=False)
    assert channel_options([("grpc.enable_retries", 1)], clarifai=False) == [("grpc.enable_retries", 1)]
    clarifai = dict(channel_options([("grpc.max_receive_message_length", 10)], clarifai=True))
    assert clarifai["grpc.enable_retries"] == 0
    assert clarifai["grpc.max_receive_message_length"] == 10
    assert clarifai["grpc.max_send_message_length"] == 1 << 30


def test_clarifai_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLARIFAI_GRPC_BASE", raising=False)
    assert clarifai_target(None) == "api.clarifai.com:443"
    assert clarifai_target("api-dev.clarifai.com") == "api-dev.clarifai.com:443"
    assert clarifai_target("localhost:8443") == "localhost:8443"
    assert clarifai_target("::1") == "[::1]:443"
    assert clarifai_target("[::1]:9") == "[::1]:9"
    monkeypatch.setenv("CLARIFAI_GRPC_BASE", "grpc.example:1443")
    assert clarifai_target(None) == "grpc.example:1443"
    with pytest.raises(ValueError, match="not a URL"):
        clarifai_target("https://api.clarifai.com")


def test_interceptor_of_a_foreign_channel_is_a_value_error() -> None:
    with grpc.insecure_channel("localhost:1") as channel, pytest.raises(ValueError, match="not built by"):
        interceptor_of(channel)


def test_v2stub_works_in_a_fresh_interpreter(emulator: ClarifaiEmulator) -> None:
    script = (
        "import asyncio, json, sys, grpc\n"
        "from clarifai_grpc.channel import clarifai_channel as cc\n"
        "from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc\n"
        "from grpc_throttle.client import clarifai_channel, clarifai_insecure_channel\n"
        "import grpc_throttle.client.aio as caio\n"
        "out = {'global_before': cc.wrap_response_deserializer is not None}\n"
        "try:\n"
        "    service_pb2_grpc.V2Stub(grpc.insecure_channel(sys.argv[1]))\n"
        "    out['trap'] = False\n"
        "except TypeError:\n"
        "    out['trap'] = True\n"
        "channel = clarifai_insecure_channel(sys.argv[1], 'fresh-pat')\n"
        "reply = service_pb2_grpc.V2Stub(channel).ListModelTypes(service_pb2.ListModelTypesRequest(), timeout=30)\n"
        "out['code'] = reply.status.code\n"
        "service_pb2_grpc.V2Stub(clarifai_channel('fresh-pat', base='localhost:1'))\n"
        "async def aio():\n"
        "    async with caio.clarifai_insecure_channel(sys.argv[1], 'fresh-pat') as ch:\n"
        "        stub = service_pb2_grpc.V2Stub(ch)\n"
        "        r = await stub.ListModelTypes(service_pb2.ListModelTypesRequest(), timeout=30)\n"
        "        return r.status.code\n"
        "out['aio_code'] = asyncio.run(aio())\n"
        "print(json.dumps(out))\n"
    )
    result = run_python(script, emulator.target)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "global_before": False,
        "trap": True,  # the clarifai-grpc trap is real in a fresh process...
        "code": status_code_pb2.SUCCESS,  # ...and our builders defuse it
        "aio_code": status_code_pb2.SUCCESS,
    }


def test_missing_clarifai_grpc_names_the_extra() -> None:
    script = (
        "import sys\n"
        "sys.modules['clarifai_grpc'] = None\n"
        "from grpc_throttle.client import clarifai_insecure_channel\n"
        "try:\n"
        "    clarifai_insecure_channel('localhost:1')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = run_python(script)
    assert result.returncode == 0, result.stderr
    assert "pip install grpc-throttle[clarifai]" in result.stdout


async def test_aio_client_retries_and_shares_the_sync_bucket(emulator: ClarifaiEmulator) -> None:
    import asyncio

    pat = new_pat()
    async with grpc_throttle.client.aio.clarifai_insecure_channel(
        emulator.target, pat, rate=50, retry=FAST_RETRY
    ) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        replies = await asyncio.gather(
            *(stub.ListModelTypes(service_pb2.ListModelTypesRequest(), timeout=30) for _ in range(6))
        )
        interceptor = grpc_throttle.client.aio.interceptor_of(channel)
        stats = interceptor.stats()
    assert [r.status.code for r in replies] == [status_code_pb2.SUCCESS] * 6
    assert interceptor.bucket is shared_bucket(pat) is grpc_throttle.client.aio.shared_bucket(pat)
    admitted, throttled = emulator.counters().per_user[user_key(f"Key {pat}")]
    assert (stats.calls, admitted) == (6, 6)
    assert throttled > 0
    assert stats.retries == stats.throttled == throttled


async def test_aio_throttled_channel_for_any_api(emulator: ClarifaiEmulator) -> None:
    channel = grpc_throttle.client.aio.throttled_channel(
        emulator.target, rate=50, metadata=[("authorization", "Key aio-generic")]
    )
    async with channel:
        grpc_throttle.client._common.prepare_clarifai_stubs()
        reply = await service_pb2_grpc.V2Stub(channel).ListModelTypes(service_pb2.ListModelTypesRequest(), timeout=30)
        assert grpc_throttle.client.aio.interceptor_of(channel).bucket.rate == 50
    assert reply.status.code == status_code_pb2.SUCCESS
    assert emulator.counters().per_user == {user_key("Key aio-generic"): (1, 0)}
    async with grpc.aio.insecure_channel(emulator.target) as foreign:
        with pytest.raises(ValueError, match="not built by"):
            grpc_throttle.client.aio.interceptor_of(foreign)
