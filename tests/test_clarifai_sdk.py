"""grpc_throttle.client.clarifai_sdk: the real Clarifai SDK against the emulator, no mocks.

Each test uses a PAT of its own, so the process-wide shared buckets
(``client.shared_bucket``) never carry one test's tokens into another.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest

# The SDK is an extra of its own (clarifai-sdk). Under CI=true scripts/test.sh installs it, so a missing SDK is
# a broken setup and the import below fails the run. The minimum-versions job leaves it out on purpose (the SDK
# needs newer clarifai-grpc and protobuf than our floors) and says so with GRPC_THROTTLE_TESTS_WITHOUT_SDK=1: there
# these tests skip when the SDK is not installed at all, and an installed SDK that fails to import still fails.
if os.environ.get("GRPC_THROTTLE_TESTS_WITHOUT_SDK") == "1":
    if importlib.util.find_spec("clarifai") is None:
        pytest.skip("the clarifai SDK is not installed (minimum-versions job)", allow_module_level=True)
elif os.environ.get("CI") != "true":
    pytest.importorskip("clarifai")

from clarifai.client.auth import helper as sdk_helper
from clarifai.client.auth import stub as sdk_stub
from clarifai.client.model import Model
from clarifai.client.user import User
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2

from grpc_throttle import RetryPolicy, TokenBucket
from grpc_throttle.client import clarifai_insecure_channel, clarifai_sdk
from grpc_throttle.testing import ClarifaiEmulator, user_key

#: A retry schedule short enough for tests.
FAST = RetryPolicy(max_attempts=8, initial_backoff=0.05, max_backoff=0.4)


@pytest.fixture
def pat() -> str:
    return f"sdk-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def emulator() -> Iterator[ClarifaiEmulator]:
    with ClarifaiEmulator(rate=5) as emu:
        yield emu


@pytest.fixture
def base(emulator: ClarifaiEmulator) -> str:
    # http:// tells the SDK the base is plaintext without it probing for TLS.
    return f"http://{emulator.target}"


@pytest.fixture(autouse=True)
def _never_left_installed() -> Iterator[None]:
    yield
    clarifai_sdk.uninstall()


def text_inputs(text: str = "hello") -> list[Any]:
    return [resources_pb2.Input(data=resources_pb2.Data(text=resources_pb2.Text(raw=text)))]


def model(pat: str, base: str, model_id: str = "m1") -> Any:
    return Model(model_id=model_id, user_id="me", app_id="main", pat=pat, base_url=base)


def test_predict_from_8_threads_at_the_quota_loses_nothing_and_is_never_throttled(
    emulator: ClarifaiEmulator, base: str, pat: str
) -> None:
    clarifai_sdk.install(rate=5)
    m = model(pat, base)  # GetModel takes the first token
    codes: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            reply = m.predict(text_inputs())
            with lock:
                codes.append(reply.status.code)

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    assert codes == [status_code_pb2.SUCCESS] * 40
    counters = emulator.counters()
    assert (counters.admitted, counters.throttled) == (41, 0)
    ideal = 40 / 5  # the bucket's one token went to GetModel
    assert 0.85 * ideal <= wall <= 1.75 * ideal, wall


def test_async_predict_is_paced_on_the_aio_channel(emulator: ClarifaiEmulator, base: str, pat: str) -> None:
    clarifai_sdk.install(rate=5)
    m = model(pat, base)

    async def burst() -> list[int]:
        replies = await asyncio.gather(*[m.async_predict(text_inputs()) for _ in range(15)])
        return [reply.status.code for reply in replies]

    started = time.monotonic()
    codes = asyncio.run(burst())
    wall = time.monotonic() - started
    assert codes == [status_code_pb2.SUCCESS] * 15
    assert emulator.counters().throttled == 0
    assert 0.85 * 15 / 5 <= wall <= 1.75 * 15 / 5 + 1, wall


def test_apps_from_list_apps_and_their_models_share_the_pats_pace(
    emulator: ClarifaiEmulator, base: str, pat: str
) -> None:
    clarifai_sdk.install(rate=5)
    apps = list(User(user_id="me", pat=pat, base_url=base).list_apps())  # two pages: 2 calls
    assert [app.id for app in apps] == ["main", "staging", "archive"]

    def models_of(app: Any) -> list[str]:
        # App.model() calls GetModel, then makes a Model that calls it again.
        return [app.model(model_id=f"m{i}").id for i in range(3)]

    started = time.monotonic()
    with futures.ThreadPoolExecutor(3) as pool:
        ids = list(pool.map(models_of, apps))
    wall = time.monotonic() - started
    assert ids == [["m0", "m1", "m2"]] * 3
    counters = emulator.counters()
    assert (counters.admitted, counters.throttled) == (2 + 18, 0)
    assert wall >= 0.85 * 18 / 5, wall


def test_grpc_request_and_the_client_builders_share_one_bucket_per_pat(
    emulator: ClarifaiEmulator, base: str, pat: str
) -> None:
    clarifai_sdk.install(rate=5)
    m = model(pat, base)
    channel = clarifai_insecure_channel(emulator.target, pat, rate=5)
    raw = service_pb2_grpc.V2Stub(channel)

    def sdk_call(_: int) -> int:
        reply = m._grpc_request(m.STUB.ListModelTypes, service_pb2.ListModelTypesRequest())
        return int(reply.status.code)

    def builder_call(_: int) -> int:
        return int(raw.ListModelTypes(service_pb2.ListModelTypesRequest(), timeout=30).status.code)

    with futures.ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(sdk_call, range(8))) + list(pool.map(builder_call, range(8)))
    channel.close()
    assert codes == [status_code_pb2.SUCCESS] * 16
    assert emulator.counters().throttled == 0


def test_retries_carry_the_pat_and_the_pace_learns_a_lower_quota(
    emulator: ClarifaiEmulator, base: str, pat: str
) -> None:
    clarifai_sdk.install(rate=40, retry=FAST)  # eight times the emulator's 5/s
    m = model(pat, base)
    with futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: m.predict(text_inputs()), range(16)))
    assert [r.status.code for r in replies] == [status_code_pb2.SUCCESS] * 16
    counters = emulator.counters()
    assert counters.throttled > 0  # there were retries...
    # ...and every attempt, first or retried, was charged to the PAT.
    assert set(counters.per_user) == {user_key(f"Key {pat}")}


def test_the_sdks_retry_stub_adds_no_attempts_while_installed(pat: str) -> None:
    # burst 1 at 0.01/s: GetModel is admitted, everything after it throttled.
    with ClarifaiEmulator(rate=0.01) as emu:
        clarifai_sdk.install(rate=50, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05))
        m = model(pat, f"http://{emu.target}")
        assert not isinstance(m.STUB, sdk_stub.RetryStub)
        reply = m._grpc_request(m.STUB.ListModelTypes, service_pb2.ListModelTypesRequest())
        assert reply.status.code == status_code_pb2.CONN_THROTTLED  # the last answer, unchanged
        assert (emu.counters().admitted, emu.counters().throttled) == (1, 3)


def test_a_session_token_gets_a_shared_pace_of_its_own(emulator: ClarifaiEmulator, base: str, pat: str) -> None:
    clarifai_sdk.install(rate=5)
    first = Model(model_id="m1", user_id="me", app_id="main", token=pat, base_url=base)
    second = Model(model_id="m2", user_id="me", app_id="main", token=pat, base_url=base)
    assert first.STUB.stub is second.STUB.stub
    with futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: (first, second)[i % 2].predict(text_inputs()), range(10)))
    assert [r.status.code for r in replies] == [status_code_pb2.SUCCESS] * 10
    # The emulator counts users by authorization; a session token has none.
    assert emulator.counters().per_user == {"anonymous": (12, 0)}


def test_sdk_objects_share_one_stub_per_pat_and_endpoint(base: str, pat: str) -> None:
    clarifai_sdk.install(rate=5)
    first, second, other = model(pat, base), model(pat, base, "m2"), model(f"{pat}-other", base)
    assert first.STUB.stub is second.STUB.stub
    assert other.STUB.stub is not first.STUB.stub


def test_uninstall_puts_the_original_objects_back(base: str, pat: str) -> None:
    helper_class = sdk_helper.ClarifaiAuthHelper
    originals = (
        helper_class.__dict__["get_stub"],
        helper_class.__dict__["get_async_stub"],
        sdk_stub.create_stub.__defaults__,
    )
    with clarifai_sdk.installed(rate=5):
        assert helper_class.__dict__["get_stub"] is not originals[0]
        assert sdk_stub.create_stub.__defaults__ != originals[2]
        paced = model(pat, base)
    after = (
        helper_class.__dict__["get_stub"],
        helper_class.__dict__["get_async_stub"],
        sdk_stub.create_stub.__defaults__,
    )
    assert all(a is b for a, b in zip(after, originals, strict=True))
    assert isinstance(model(pat, base).STUB, sdk_stub.RetryStub)  # the SDK's own again
    assert paced.predict(text_inputs()).status.code == status_code_pb2.SUCCESS  # made while installed: still works


def test_installing_twice_is_an_error_and_uninstall_when_not_installed_does_nothing() -> None:
    clarifai_sdk.uninstall()
    with clarifai_sdk.installed(rate=5), pytest.raises(RuntimeError, match="already installed"):
        clarifai_sdk.install(rate=5)
    clarifai_sdk.uninstall()
    with clarifai_sdk.installed(rate=7):  # installable again after uninstall
        pass


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": float("nan")}, "rate"),
        ({"capacity": 0.5}, "capacity"),
        ({"retry": "fast"}, "retry"),
        ({"throttle": 11005}, "throttle"),
        ({"bucket": "shared"}, "bucket"),
        ({"bucket": TokenBucket(5), "capacity": 2}, "capacity"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        clarifai_sdk.install(**kwargs)
    clarifai_sdk.install(rate=5)  # a refused install() left nothing behind


@pytest.mark.parametrize("found", ["12.1.7", "11.6.0", "2.6.2"])
def test_an_sdk_older_than_supported_is_an_import_error_naming_both_versions(
    monkeypatch: pytest.MonkeyPatch, found: str
) -> None:
    monkeypatch.setattr(importlib.metadata, "version", lambda name: found)
    with pytest.raises(ImportError, match=rf"clarifai {found} .*clarifai>=12\.2\.0"):
        clarifai_sdk.install()


def test_a_missing_sdk_is_an_import_error_saying_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(ImportError, match=r"grpc-throttle\[clarifai-sdk\]"):
        clarifai_sdk.install()


@pytest.mark.parametrize(
    ("version", "parsed"), [("12.5.0", (12, 5, 0)), ("12.2.0", (12, 2, 0)), ("12.1.6rc1", (12, 1, 6)), ("13", (13,))]
)
def test_version_tuple(version: str, parsed: tuple[int, ...]) -> None:
    assert clarifai_sdk._version_tuple(version) == parsed


def test_all_lists_the_public_names_sorted() -> None:
    assert clarifai_sdk.__all__ == ["MIN_VERSION", "install", "installed", "uninstall"]
    assert all(hasattr(clarifai_sdk, name) for name in clarifai_sdk.__all__)
